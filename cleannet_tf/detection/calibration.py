"""Calibration of P(label correct): Platt scaling of the scores on verified rows, per-class offsets, and the one
`correct_probabilities` of scores and a calibration (a verifier head's, or one fitted here).

Notation as label_noise.py: scores (N,) in [-1, 1], verification (N,) 1 / 0 / -1, probabilities (N,) P(correct).
Imports nothing of the package at run time (training.pool for a type). label_noise.py (the public NumPy API)
offers its NumPy functions too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a type only: importing this module (and label_noise.py) loads no TensorFlow
    from cleannet_tf.training import pool as training_pool

OFFSET_PRIOR_SCALE = 2.0  # logit units: a class's offset needs a few dozen verified pairs to move far


def as_scores(scores) -> np.ndarray:
    """`scores` as a (N,) float64 array (ValueError naming the shape otherwise)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be (N,). Received shape {scores.shape}")
    return scores


def as_verification(verification, shape) -> np.ndarray:
    """`verification` as an array of `shape` (the scores'), ValueError otherwise."""
    verification = np.asarray(verification)
    if verification.shape != shape:
        raise ValueError(f"verification must be (N,) like scores. Received {verification.shape}")
    return verification


def _calibration_input(scores, scoring: str) -> np.ndarray:
    """What Platt scaling is fitted on: the logit log((1 + s) / (1 - s)) of a stacked score, else the score."""
    scores = as_scores(scores)
    if scoring != "stacked":
        return scores
    clipped = np.clip(scores, -1.0 + 1e-7, 1.0 - 1e-7)
    return np.log1p(clipped) - np.log1p(-clipped)


def fit_calibration(scores, verification, *, scoring: str) -> tuple[float, float]:
    """Platt scaling: (a, b) with P(label correct | s) = sigmoid(a x + b), x the score's calibration input.

    Args:
        scores: (n,) float. verification: (n,) 0/1, both present.
        scoring: "stacked" (x = the stacked logistic regression's logit, so (a, b) rescale its temperature and
            base rate), or "cosine" / "margin" (x = s).
    """
    from sklearn.linear_model import LogisticRegression

    inputs = _calibration_input(scores, scoring)
    verification = as_verification(verification, inputs.shape)
    if not np.isin(verification, (0, 1)).all() or len(np.unique(verification)) < 2:
        raise ValueError("fit_calibration needs verified pairs of both kinds (0 and 1).")
    logistic = LogisticRegression(C=1.0).fit(inputs[:, None], verification)  # mild L2: separable rows stay finite
    return float(logistic.coef_[0, 0]), float(logistic.intercept_[0])


def correct_probability(scores, *, scoring: str, calibration: tuple[float, float] | None = None) -> np.ndarray:
    """(N,) float64 calibrated P(label correct) of each pair from its score.

    Args:
        scores: (N,) float.
        scoring: "stacked" (s = 2 P - 1: without calibration, P = (s + 1) / 2, the stacked logistic regression's
            own probability), or "cosine" / "margin", which need `calibration`.
        calibration: (a, b) of `fit_calibration` with the same scoring (P = sigmoid(a x + b)).
    """
    scores = as_scores(scores)
    if calibration is None:
        if scoring != "stacked":
            raise ValueError(f"scoring={scoring!r} needs a calibration (fit_calibration on verified pairs).")
        return np.clip((scores + 1.0) / 2.0, 0.0, 1.0)
    a, b = calibration
    return 1.0 / (1.0 + np.exp(-(a * _calibration_input(scores, scoring) + b)))


def correct_probabilities(scores, *, scoring: str, calibration: tuple[float, float] | None) -> np.ndarray | None:
    """(N,) float64 calibrated P(label correct) of `scores` with `calibration` (a verifier head's, or
    fit_probability_calibration's); None for cosine or margin scores without one (the stacked score has its own)."""
    if calibration is None and scoring != "stacked":
        return None
    return correct_probability(scores, scoring=scoring, calibration=calibration)


def half_probability_score(calibration: tuple[float, float], scoring: str) -> float | None:
    """The score where the Platt calibration (a, b) gives P(label correct) = 1/2: the threshold of the fewest
    expected errors on the rows it was fitted on; None when a <= 0 (a score that does not rank)."""
    a, b = calibration
    if a <= 0:
        return None
    x = -b / a
    return float(np.tanh(x / 2.0)) if scoring == "stacked" else float(x)  # stacked: x = log((1 + s) / (1 - s))


def calibration_rows(data: training_pool.TrainingData, calibration_classes: np.ndarray | None = None) -> np.ndarray:
    """Pool rows the probabilities are calibrated on: verified rows of verified classes that CleanNet did not train
    on (the validation rows, and the calibration classes' verified_train rows)."""
    verified_class = ~data.heldout_classes[data.labels]
    unseen = np.zeros(len(data.labels), bool)
    unseen[data.validation] = True
    if calibration_classes is not None:
        unseen |= calibration_classes[data.labels]
    return np.nonzero((data.verification >= 0) & verified_class & unseen)[0]


def fit_probability_calibration(scores: np.ndarray, verification: np.ndarray,
                                scoring: str) -> tuple[tuple[float, float] | None, dict]:
    """Platt scaling (fit_calibration) on the scores (n,) of `calibration_rows` and their
    verification (n,) 0/1; None when those rows are all of one kind. Returns ((a, b) or None, how)."""
    if len(np.unique(verification)) < 2:
        return None, {"calibration": "stacked" if scoring == "stacked" else
                      "none (the verified rows are all of one kind)"}
    calibration = fit_calibration(scores, verification, scoring=scoring)
    return calibration, {"calibration": "platt", "calibration_ab": list(calibration), "n_calibration": len(scores)}


def class_offsets(probabilities, labels, verification, *, num_classes: int, classes=None,
                  prior_scale: float = OFFSET_PRIOR_SCALE) -> np.ndarray:
    """Per-class calibration: (C,) logit offsets d_c with P_c = sigmoid(logit(P) + d_c) fitted on the class's
    verified pairs (maximum a posteriori, a Gaussian prior of scale `prior_scale` on d_c; 0 without verified pairs).

    One Platt calibration for every class misses each class's own base rate (classes whose wrong labels look
    alike, or whose right labels are hard); d_c refits the intercept of class c.

    Args:
        probabilities: (N,) calibrated P(label correct). labels: (N,) class ids. verification: (N,) 1 / 0 / -1.
        classes: optional (C,) bool, the classes that get an offset (e.g. not the held-out ones, whose verified
            rows only evaluate); the others keep 0.

    Returns:
        (C,) float64 offsets.
    """
    logits = _logit(as_scores(probabilities))
    labels = np.asarray(labels)
    verification = as_verification(verification, logits.shape)
    offsets = np.zeros(num_classes)
    for c in range(num_classes):
        rows = (labels == c) & (verification >= 0)
        if (classes is not None and not classes[c]) or not rows.any():
            continue
        z, y = logits[rows], verification[rows].astype(np.float64)

        def gradient(d, z=z, y=y):  # d/dd of the log posterior: decreasing in d, one root
            return np.sum(y - 1.0 / (1.0 + np.exp(-(z + d)))) - d / prior_scale ** 2

        low, high = -1.0, 1.0
        while gradient(low) < 0:
            low *= 2
        while gradient(high) > 0:
            high *= 2
        for _ in range(60):  # bisection to ~1e-15
            middle = (low + high) / 2
            low, high = (middle, high) if gradient(middle) > 0 else (low, middle)
        offsets[c] = (low + high) / 2
    return offsets


def shift_probabilities(probabilities, labels, offsets) -> np.ndarray:
    """(N,) P(label correct) with each pair's class offset (class_offsets): sigmoid(logit(P) + d_label)."""
    logits = _logit(as_scores(probabilities)) + np.asarray(offsets)[np.asarray(labels)]
    return 1.0 / (1.0 + np.exp(-logits))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return np.log(p) - np.log1p(-p)
