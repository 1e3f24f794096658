"""Label-noise functions shaped like cleanlab's: NumPy in, NumPy out, keyword-only options.

Notation: N (image, label) pairs; `scores` (N,) are CleanNet scores s in [-1, 1]
(cosine of the image's query embedding and its label's class embedding). Low
scores mean the label is likely wrong; a pair is flagged when s < threshold.

Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np

WEIGHT_MODES = ("none", "soft", "hard")


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


def sample_weights(scores, *, mode: str, threshold: float | None = None, verification=None) -> np.ndarray:
    """Per-pair training weights from CleanNet scores (the paper's w_soft and w_hard).

    Args:
        scores: (N,) float. CleanNet scores; NaN = not scored (weight 1).
        mode: "soft" (max(0, s)), "hard" (1[s >= threshold]) or "none" (1).
        threshold: float. Required for "hard".
        verification: optional (N,) int, 1 / 0 / -1. A human verification label
            takes precedence over the score (1 -> weight 1, 0 -> weight 0).

    Returns:
        (N,) float32 weights in [0, 1].
    """
    scores = _scores(scores)
    if mode == "none":
        weights = np.ones(len(scores))
    elif mode == "soft":
        weights = np.maximum(0.0, scores)
    elif mode == "hard":
        if threshold is None:
            raise ValueError("mode='hard' needs a threshold.")
        weights = (scores >= threshold).astype(np.float64)
    else:
        raise ValueError(f"mode must be one of {WEIGHT_MODES}. Received: mode={mode!r}")
    weights = np.where(np.isnan(scores), 1.0, np.minimum(weights, 1.0))
    if verification is not None and mode != "none":
        verification = np.asarray(verification)
        if verification.shape != scores.shape:
            raise ValueError(f"verification must be (N,) like scores. Received {verification.shape}")
        weights = np.where(verification == 1, 1.0, np.where(verification == 0, 0.0, weights))
    return weights.astype(np.float32)
