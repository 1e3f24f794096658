"""Label-noise detection metrics on verified pairs (NumPy in, NumPy out).

A pair (image, label) is predicted correct when its score s >= threshold. With
verification label l (1 = correct), the detection error is the fraction of
verified pairs predicted wrongly: 1 - the paper's accuracy. "Noisy" (l = 0) is
the positive class of precision / recall / F1.

Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _check(scores, verification) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    verification = np.asarray(verification)
    if scores.shape != verification.shape or scores.ndim != 1:
        raise ValueError(f"scores and verification must both be (n,). Received {scores.shape} and {verification.shape}")
    if not np.isin(verification, (0, 1)).all():
        raise ValueError("verification labels must be 0 or 1")
    return scores, verification.astype(np.int64)


def best_threshold(scores, verification) -> tuple[float, float]:
    """The threshold with the lowest detection error on verified pairs.

    Args:
        scores: (n,) float. verification: (n,) 0/1.
    Returns:
        (threshold, error). Among equally good thresholds, the middle of the
        widest gap between neighbouring scores is taken.
    """
    scores, verification = _check(scores, verification)
    if not len(scores):
        return 0.0, float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], verification[order]
    # Threshold just above sorted_scores[i - 1], for i = 0..n: the first i pairs are called wrong.
    wrong_called_wrong = np.concatenate([[0], np.cumsum(sorted_labels == 0)])
    correct_called_wrong = np.concatenate([[0], np.cumsum(sorted_labels == 1)])
    errors = correct_called_wrong + (np.sum(sorted_labels == 0) - wrong_called_wrong)
    # Only cut between distinct scores.
    cut_ok = np.concatenate([[True], sorted_scores[1:] > sorted_scores[:-1], [True]])
    errors = np.where(cut_ok, errors, np.iinfo(np.int64).max)
    candidates = np.nonzero(errors == errors.min())[0]
    lower = np.concatenate([[sorted_scores[0] - 1.0], sorted_scores])[candidates]
    upper = np.concatenate([sorted_scores, [sorted_scores[-1] + 1.0]])[candidates]
    widest = int(np.argmax(upper - lower))
    threshold = float((lower[widest] + upper[widest]) / 2)
    return threshold, float(errors[candidates[widest]] / len(scores))


def detection_metrics(scores, verification, threshold: float) -> dict:
    """Error, precision / recall / F1 of "noisy", ROC-AUC and counts at `threshold`.

    Args:
        scores: (n,) float. verification: (n,) 0/1. threshold: float.
    """
    scores, verification = _check(scores, verification)
    n = len(scores)
    predicted_noisy = scores < threshold
    noisy = verification == 0
    true_positive = int(np.sum(predicted_noisy & noisy))
    precision = true_positive / max(int(predicted_noisy.sum()), 1)
    recall = true_positive / max(int(noisy.sum()), 1)
    both_classes = 0 < noisy.sum() < n
    return {
        "n": n,
        "n_noisy": int(noisy.sum()),
        "error": float(np.mean(predicted_noisy != noisy)) if n else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        # AUC of the score ranking correct pairs above wrong ones.
        "roc_auc": float(roc_auc_score(verification, scores)) if both_classes else float("nan"),
    }


def per_class_error(scores, verification, labels, threshold: float, num_classes: int) -> np.ndarray:
    """(C,) detection error per class at `threshold` (NaN for classes with no verified pair)."""
    scores, verification = _check(scores, verification)
    wrong = ((scores < threshold) != (verification == 0)).astype(np.float64)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    sums = np.bincount(labels, weights=wrong, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)
