"""Label-noise functions shaped like cleanlab's: NumPy in, NumPy out, keyword-only options.

Notation: N (image, label) pairs; `scores` (N,) are CleanNet scores s in [-1, 1]
(cosine of the image's query embedding and its label's class embedding, or the
stacked score 2 P - 1). Low scores mean the label is likely wrong; a pair is
flagged when s < threshold. `probabilities` (N,) are calibrated P(label correct)
(`correct_probability`); verification labels are 1 (correct), 0 (wrong), -1 (none).

Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np

WEIGHT_MODES = ("none", "soft", "hard")
OFFSET_PRIOR_SCALE = 2.0  # logit units: a class's offset needs a few dozen verified pairs to move far


def _scores(scores) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be (N,). Received shape {scores.shape}")
    return scores


def find_label_issues(scores, *, threshold: float, return_ranked: bool = False) -> np.ndarray:
    """Pairs whose label is likely wrong.

    Args:
        scores: (N,) float. CleanNet scores.
        threshold: float. A pair is flagged when its score is below it (the
            threshold `cleannet-verify` chose on verified validation rows).
        return_ranked: bool. False: (N,) bool mask. True: the flagged indices,
            most suspicious (lowest score) first, ties by index.

    Returns:
        (N,) bool, or (M,) int64 indices.
    """
    scores = _scores(scores)
    flagged = scores < threshold
    if not return_ranked:
        return flagged
    indices = np.nonzero(flagged)[0]
    return indices[np.argsort(scores[indices], kind="stable")].astype(np.int64)


def sample_weights(scores, *, mode: str, threshold: float | None = None, verification=None,
                   probabilities=None) -> np.ndarray:
    """Per-pair training weights from CleanNet scores (the paper's w_soft and w_hard).

    Args:
        scores: (N,) float. CleanNet scores; NaN = not scored (weight 1).
        mode: "soft", "hard" (1[s >= threshold]) or "none" (1).
        threshold: float. Required for "hard".
        verification: optional (N,) int, 1 / 0 / -1. A human verification label
            takes precedence over the score (1 -> weight 1, 0 -> weight 0).
        probabilities: optional (N,) calibrated P(label correct) (scores.tsv's
            weight_soft, `correct_probability`): the soft weight when given; without
            it "soft" is the paper's max(0, s), meant for cosine scores.

    Returns:
        (N,) float32 weights in [0, 1].
    """
    scores = _scores(scores)
    if mode == "none":
        weights = np.ones(len(scores))
    elif mode == "soft":
        if probabilities is None:
            weights = np.maximum(0.0, scores)
        else:
            weights = _scores(probabilities)
            if weights.shape != scores.shape:
                raise ValueError(f"probabilities must be (N,) like scores. Received {weights.shape}")
            weights = np.clip(np.where(np.isnan(weights), np.maximum(0.0, scores), weights), 0.0, 1.0)
    elif mode == "hard":
        if threshold is None:
            raise ValueError("mode='hard' needs a threshold.")
        weights = (scores >= threshold).astype(np.float64)
    else:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}. Received: mode={mode!r}")
    weights = np.where(np.isnan(scores), 1.0, np.minimum(weights, 1.0))
    if verification is not None and mode != "none":
        verification = _verification(verification, scores.shape)
        weights = np.where(verification == 1, 1.0, np.where(verification == 0, 0.0, weights))
    return weights.astype(np.float32)


def _verification(verification, shape) -> np.ndarray:
    verification = np.asarray(verification)
    if verification.shape != shape:
        raise ValueError(f"verification must be (N,) like scores. Received {verification.shape}")
    return verification


def _calibration_input(scores, scoring: str) -> np.ndarray:
    """What Platt scaling is fitted on: the logit log((1 + s) / (1 - s)) of a stacked score, else the score."""
    scores = _scores(scores)
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
    verification = _verification(verification, inputs.shape)
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
    scores = _scores(scores)
    if calibration is None:
        if scoring != "stacked":
            raise ValueError(f"scoring={scoring!r} needs a calibration (fit_calibration on verified pairs).")
        return np.clip((scores + 1.0) / 2.0, 0.0, 1.0)
    a, b = calibration
    return 1.0 / (1.0 + np.exp(-(a * _calibration_input(scores, scoring) + b)))


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
    logits = _logit(_scores(probabilities))
    labels = np.asarray(labels)
    verification = _verification(verification, logits.shape)
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
    logits = _logit(_scores(probabilities)) + np.asarray(offsets)[np.asarray(labels)]
    return 1.0 / (1.0 + np.exp(-logits))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return np.log(p) - np.log1p(-p)


def estimate_noise_rates(probabilities, labels, *, num_classes: int, verification=None) -> tuple[np.ndarray, float]:
    """Noise rate per class and overall: the mean of 1 - P(label correct), verified pairs counted as they are.

    Args:
        probabilities: (N,) calibrated P(label correct) (per class: shift_probabilities). labels: (N,) class ids
            (the given labels).
        verification: optional (N,) 1 / 0 / -1; a verified pair counts 1 - its label.

    Returns:
        ((C,) float64 expected share of wrong labels among each class's pairs, NaN for a class with none;
        the overall share).
    """
    wrong = 1.0 - _scores(probabilities)
    labels = np.asarray(labels)
    if verification is not None:
        verification = _verification(verification, wrong.shape)
        wrong = np.where(verification == 1, 0.0, np.where(verification == 0, 1.0, wrong))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    sums = np.bincount(labels, weights=wrong, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, sums / counts, np.nan)
    return per_class, float(wrong.mean()) if len(wrong) else float("nan")
