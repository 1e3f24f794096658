"""Label-noise functions shaped like cleanlab's: NumPy in, NumPy out, keyword-only options.

Notation: N (image, label) pairs; `scores` (N,) are CleanNet scores s in [-1, 1]
(cosine of the image's query embedding and its label's class embedding, or the
stacked score 2 P - 1). Low scores mean the label is likely wrong; a pair is
flagged when s < threshold. `probabilities` (N,) are calibrated P(label correct)
(calibration.py); verification labels are 1 (correct), 0 (wrong), -1 (none).

The calibration functions (fit_calibration, correct_probability, class_offsets, shift_probabilities) are
calibration.py's, offered here as part of this API. Imports `detection.calibration`.
"""

from __future__ import annotations

import numpy as np

from cleannet_tf.detection.calibration import (
    as_scores,
    as_verification,
    class_offsets,
    correct_probability,
    fit_calibration,
    shift_probabilities,
)

__all__ = ["WEIGHT_MODES", "class_offsets", "correct_probability", "estimate_noise_rates", "find_label_issues",
           "fit_calibration", "sample_weights", "shift_probabilities"]

WEIGHT_MODES = ("none", "soft", "hard")


def _thresholds(threshold, shape) -> np.ndarray:
    """`threshold` (a float, or (N,) per pair, e.g. operating_point.class_thresholds[labels]) as an array of
    `shape`; ValueError naming the shape otherwise."""
    threshold = np.asarray(threshold, np.float64)
    if threshold.ndim and threshold.shape != shape:
        raise ValueError(f"threshold must be a float or (N,) like scores. Received shape {threshold.shape}")
    return np.broadcast_to(threshold, shape)


def find_label_issues(scores, *, threshold, return_ranked: bool = False) -> np.ndarray:
    """Pairs whose label is likely wrong.

    Args:
        scores: (N,) float. CleanNet scores.
        threshold: float, or (N,) each pair's. A pair is flagged when its score is below it: the threshold
            `cleannet-verify` chose on verified rows, or at the calibrated operating point (metrics.json's
            class_thresholds, operating_point.py) class_thresholds[labels].
        return_ranked: bool. False: (N,) bool mask. True: the flagged indices,
            most suspicious (lowest score) first, ties by index.

    Returns:
        (N,) bool, or (M,) int64 indices.
    """
    scores = as_scores(scores)
    flagged = scores < _thresholds(threshold, scores.shape)
    if not return_ranked:
        return flagged
    indices = np.nonzero(flagged)[0]
    return indices[np.argsort(scores[indices], kind="stable")].astype(np.int64)


def sample_weights(scores, *, mode: str, threshold=None, verification=None,
                   probabilities=None) -> np.ndarray:
    """Per-pair training weights from CleanNet scores (the paper's w_soft and w_hard).

    Args:
        scores: (N,) float. CleanNet scores; NaN = not scored (weight 1).
        mode: "soft", "hard" (1[s >= threshold]) or "none" (1).
        threshold: float, or (N,) each pair's (as find_label_issues). Required for "hard".
        verification: optional (N,) int, 1 / 0 / -1. A human verification label
            takes precedence over the score (1 -> weight 1, 0 -> weight 0).
        probabilities: optional (N,) calibrated P(label correct) (scores.tsv's
            weight_soft, calibration.correct_probability): the soft weight when given; without
            it "soft" is the paper's max(0, s), meant for cosine scores.

    Returns:
        (N,) float32 weights in [0, 1].
    """
    scores = as_scores(scores)
    if mode == "none":
        weights = np.ones(len(scores))
    elif mode == "soft":
        if probabilities is None:
            weights = np.maximum(0.0, scores)
        else:
            weights = as_scores(probabilities)
            if weights.shape != scores.shape:
                raise ValueError(f"probabilities must be (N,) like scores. Received {weights.shape}")
            weights = np.clip(np.where(np.isnan(weights), np.maximum(0.0, scores), weights), 0.0, 1.0)
    elif mode == "hard":
        if threshold is None:
            raise ValueError("mode='hard' needs a threshold.")
        weights = (scores >= _thresholds(threshold, scores.shape)).astype(np.float64)
    else:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}. Received: mode={mode!r}")
    weights = np.where(np.isnan(scores), 1.0, np.minimum(weights, 1.0))
    if verification is not None and mode != "none":
        verification = as_verification(verification, scores.shape)
        weights = np.where(verification == 1, 1.0, np.where(verification == 0, 0.0, weights))
    return weights.astype(np.float32)


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
    wrong = 1.0 - as_scores(probabilities)
    labels = np.asarray(labels)
    if verification is not None:
        verification = as_verification(verification, wrong.shape)
        wrong = np.where(verification == 1, 0.0, np.where(verification == 0, 1.0, wrong))
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    sums = np.bincount(labels, weights=wrong, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, sums / counts, np.nan)
    return per_class, float(wrong.mean()) if len(wrong) else float("nan")
