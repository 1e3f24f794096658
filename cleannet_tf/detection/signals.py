"""Post-hoc label-noise detectors on fixed features: class-agnostic signals and a stacked detector.

CleanNet learns class embeddings from verification labels and transfers poorly to classes nobody verified
(benchmarks/transfer.py). The detector here transfers by construction: every signal is computed the same way
for every class from the features and the noisy labels alone, and only a handful of weights (one per signal,
not per class) are fitted on the verification labels of the verified classes.

Signals of an image i labelled y_i, with x_i = ln(1 + x) features scaled to unit norm:

    centroid_cosine          cos(x_i, mean of class y_i)
    centroid_margin          centroid_cosine - max_{c != y_i} cos(x_i, mean of class c)
    robust_cosine            cos(x_i, robust mean of class y_i): the mean of the `keep` fraction of the class
                             most similar to the previous mean, iterated (mass-aware: the clean majority
                             decides, far-off noisy images do not)
    robust_margin            robust_cosine - max_{c != y_i} cos(x_i, robust mean of class c)
    robust_cosine_standardized  robust_cosine standardised per class by median / MAD over the class's images
    knn_agreement_<k>        fraction of the k nearest other images (cosine) that carry label y_i
    classifier_margin        score of the own label minus the best other one, of a linear classifier trained
                             on the noisy labels (linear_classifier: ridge one-vs-rest); the classifier is per
                             class, the margin means the same in every class

    signals, names = detection_signals(features, labels, num_classes=C)          # (N, F)
    detector = StackedDetector().fit(signals[verified_rows], verification[verified_rows])
    scores = detector.score(signals)                                              # (N,) P(label correct)

NumPy in, NumPy out; memory is bounded by `batch_size` rows against all C classes (kNN: neighbours.py).

Imports `features`, `ops`.
"""

from __future__ import annotations

import numpy as np

from cleannet_tf import ops
from cleannet_tf.features import neighbours

# The shared math lives in ops.py; these names stay for callers of detectors.
log_normalize = ops.log_normalize
class_means = ops.class_means
_check_labels = ops.check_labels


def robust_class_members(x: np.ndarray, labels: np.ndarray, *, num_classes: int, keep: float = 0.7,
                         iterations: int = 3) -> np.ndarray:
    """(N,) bool: the rows the trimmed class means are made of (ops.trimmed_class_core; see robust_class_means).

    x (N, D) unit rows, labels (N,). With iterations=0 every row is a member.
    """
    return ops.trimmed_class_core(x, labels, num_classes=num_classes, keep=keep, iterations=iterations)


def robust_class_means(x: np.ndarray, labels: np.ndarray, *, num_classes: int, keep: float = 0.7,
                       iterations: int = 3) -> np.ndarray:
    """Trimmed class means: x (N, D) unit rows, labels (N,) -> (C, D) unit rows.

    Starts from the plain mean; each iteration keeps the `keep` fraction of each class most similar to its
    current mean and recomputes the mean from those. With less than (1 - keep) noise per class, the result is
    the mean of the clean majority, whatever the noisy images look like.
    """
    members = robust_class_members(x, labels, num_classes=num_classes, keep=keep, iterations=iterations)
    return class_means(x, labels, num_classes=num_classes, weights=members)


def own_class_margin(x: np.ndarray, labels: np.ndarray, class_vectors: np.ndarray, *,
                     batch_size: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Similarity to the own class and its margin to the best other class.

    Args:
        x: (N, E) unit rows (image features or query embeddings).
        labels: (N,) int. class_vectors: (C, E) unit rows (means, or CleanNet class embeddings), C >= 2.
    Returns:
        own (N,) = x_i . v_{y_i}; margin (N,) = own - max_{c != y_i} x_i . v_c. Both float32.
    """
    labels = _check_labels(labels, len(x), len(class_vectors))
    if len(class_vectors) < 2:
        raise ValueError("own_class_margin needs at least 2 classes.")
    own = np.empty(len(x), np.float32)
    margin = np.empty(len(x), np.float32)
    for start in range(0, len(x), batch_size):
        chunk = slice(start, start + batch_size)
        own[chunk], margin[chunk] = ops.own_and_margin(x[chunk] @ class_vectors.T, labels[chunk])
    return own, margin


def knn_label_agreement(x: np.ndarray, labels: np.ndarray, *, k: int = 10, batch_size: int = 0,
                        method: str = "auto") -> np.ndarray:
    """Fraction of each row's k nearest other rows (cosine) that share its label: (N, D), (N,) -> (N,).

    neighbours.nearest_neighbours: exact up to neighbours.EXACT_MAX_ROWS rows, approximate (faiss) above;
    batch_size query rows per block (0: its default).
    """
    labels = np.asarray(labels)
    indices, _ = neighbours.nearest_neighbours(x, k, method=method, block_rows=batch_size)
    return (labels[indices] == labels[:, None]).mean(axis=1).astype(np.float32)


def linear_classifier(x: np.ndarray, labels: np.ndarray, *, num_classes: int, l2: float = 1.0,
                      sample_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A ridge one-vs-rest linear classifier of the noisy labels: x (N, D), labels (N,) -> weights (D, C), bias (C,).

    Least squares on targets +1 (own label) / -1 (other classes) with an L2 penalty `l2` on weights and bias, in
    closed form (one (D+1, D+1) Gram matrix, accumulated in blocks). sample_weights (N,) >= 0 weigh each row's
    squared error (None: all 1; a row of weight 0 is left out), e.g. P(label correct) from a first fit
    (reweighted_classifier). Its scores x @ weights + bias rank wrong labels the way cleanlab's cross-validated
    probabilities do; on CIFAR-10N (20k rows, D=1280) the scores of the fit on every row rank the pool's own
    images as well as out-of-sample (leave-one-out) scores (docs/results.md), so the same fit scores the
    pool and new images.
    """
    labels = _check_labels(labels, len(x), num_classes)
    if sample_weights is not None:
        sample_weights = np.asarray(sample_weights, np.float64)
        if sample_weights.shape != (len(x),) or not np.all(np.isfinite(sample_weights)) or (sample_weights < 0).any():
            raise ValueError(f"sample_weights must be ({len(x)},) finite and >= 0. Received shape "
                             f"{sample_weights.shape}")
    d = x.shape[1]
    gram = np.zeros((d + 1, d + 1))
    cross = np.zeros((d + 1, num_classes))
    for start in range(0, len(x), 8192):
        block = np.asarray(x[start:start + 8192], np.float64)
        xb = np.concatenate([block, np.ones((len(block), 1))], axis=1)
        xw = xb if sample_weights is None else xb * sample_weights[start:start + 8192, None]
        gram += xw.T @ xb
        cross += xw.T @ (2.0 * np.eye(num_classes)[labels[start:start + 8192]] - 1.0)
    w = np.linalg.solve(gram + l2 * np.eye(d + 1), cross)
    return w[:d].astype(np.float32), w[d].astype(np.float32)


def classifier_refit_weights(correct_probability: np.ndarray, verified_rows: np.ndarray,
                             verification: np.ndarray) -> np.ndarray:
    """Row weights of a refit of the linear classifier: P(label correct) (N,), verified rows as verified.

    verified_rows (n,) row ids and verification (n,) 0/1: a verified-wrong row gets weight 0 (left out of the
    refit), a verified-right one weight 1; every other row its probability. Returns (N,) float64 in [0, 1].
    """
    weights = np.clip(np.asarray(correct_probability, np.float64), 0.0, 1.0)
    weights[np.asarray(verified_rows)] = np.asarray(verification, np.float64)
    return weights


def per_class_standardize(scores: np.ndarray, labels: np.ndarray, *, num_classes: int) -> np.ndarray:
    """(s - median of its class) / (1.4826 MAD of its class), over all of the class's rows: (N,), (N,) -> (N,).

    Needs no verification labels; removes per-class offsets and scales of a score (a class whose images all
    score low no longer has all its images flagged).
    """
    scores = np.asarray(scores, np.float64)
    labels = _check_labels(labels, len(scores), num_classes)
    out = np.zeros(len(scores), np.float64)
    for c in np.unique(labels):
        rows = labels == c
        median = np.median(scores[rows])
        mad = 1.4826 * np.median(np.abs(scores[rows] - median))
        out[rows] = (scores[rows] - median) / (mad + 1e-6)
    return out


def detection_signals(features: np.ndarray, labels: np.ndarray, *, num_classes: int, knn_k=(10, 30),
                      keep: float = 0.7, iterations: int = 3) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class-agnostic per-image signals (see the module docstring): (N, D), (N,) -> (N, F) float32, F names.

    Args:
        features: (N, D) raw features (e.g. pool5 / the classifier's penultimate layer) of every image.
        labels: (N,) int noisy labels in [0, num_classes).
        knn_k: neighbour counts of the kNN agreement signals (each must be < N).
        keep, iterations: robust class means (see robust_class_means).
    """
    x = log_normalize(features)
    labels = _check_labels(labels, len(x), num_classes)
    columns: dict[str, np.ndarray] = {}
    columns["centroid_cosine"], columns["centroid_margin"] = own_class_margin(
        x, labels, class_means(x, labels, num_classes=num_classes))
    robust = robust_class_means(x, labels, num_classes=num_classes, keep=keep, iterations=iterations)
    columns["robust_cosine"], columns["robust_margin"] = own_class_margin(x, labels, robust)
    columns["robust_cosine_standardized"] = per_class_standardize(columns["robust_cosine"], labels,
                                                                  num_classes=num_classes)
    for k in knn_k:
        columns[f"knn_agreement_{k}"] = knn_label_agreement(x, labels, k=int(k))
    names = tuple(columns)
    return np.stack([columns[name] for name in names], axis=1).astype(np.float32), names
