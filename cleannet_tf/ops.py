"""The one NumPy copy of the math the detectors, reference sets and scores share.

Notation: N rows, C classes, D feature dimensions. Models compute ln(1 + x) with
the Keras layer (layers.FeatureNormalization / layers.signed_log1p); this module
is its NumPy twin. Imports NumPy only.
"""

from __future__ import annotations

import numpy as np


def signed_log1p(features: np.ndarray) -> np.ndarray:
    """CleanNet's ln(1 + x), sign-symmetric for negative inputs: sign(x) ln(1 + |x|), same shape."""
    return np.sign(features) * np.log1p(np.abs(features))


def unit_rows(x: np.ndarray, dtype=None) -> np.ndarray:
    """Each row divided by its L2 norm (at least 1e-12): (N, D) -> (N, D), as `dtype` when given."""
    x = np.asarray(x, dtype)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


BLOCK_ROWS = 16384  # rows per block of the (N, D) loops: temporaries of one block, never of N rows


def log_normalize(features: np.ndarray, *, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """signed_log1p, then unit L2 rows: (N, D) -> (N, D) float32 (one output array; a block of temporaries)."""
    if getattr(features, "ndim", np.ndim(features)) != 2:
        raise ValueError(f"features must be (N, D). Received shape {np.shape(features)}")
    out = np.empty(np.shape(features), np.float32)
    for start in range(0, len(out), block_rows):  # row-wise: the same values as one pass over all rows
        out[start:start + block_rows] = unit_rows(signed_log1p(np.asarray(features[start:start + block_rows],
                                                                          dtype=np.float32)))
    return out


class LogNormalizedRows:
    """Read-only (N, D) view of log_normalize(features): x[rows] (a slice or an index array) computes those rows.

    For the blocked loops below (class_means, trimmed_class_core, a linear fit): the features' memory once, not a
    second (N, D) copy; each read pays the logarithm again. Values equal log_normalize(features)[rows].
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, features: np.ndarray):
        self.features = features
        self.shape = tuple(np.shape(features))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return log_normalize(self.features[rows])


def check_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """labels as (n,) int64 in [0, num_classes), or a ValueError saying what is wrong."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({n},) integers. Received shape {labels.shape}, dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}). Received range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)


def class_means(x: np.ndarray, labels: np.ndarray, *, num_classes: int,
                weights: np.ndarray | None = None) -> np.ndarray:
    """Unit-norm (weighted) mean of each class: x (N, D), labels (N,) -> (C, D). Empty classes give zeros."""
    labels = check_labels(labels, len(x), num_classes)
    w = np.ones(len(x), np.float32) if weights is None else np.asarray(weights, np.float32)
    sums = np.zeros((num_classes, x.shape[1]), np.float64)
    for start in range(0, len(x), BLOCK_ROWS):  # per block: rows sorted by label, each class's run summed at once
        block = slice(start, start + BLOCK_ROWS)
        order = np.argsort(labels[block], kind="stable")
        sorted_labels = labels[block][order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        weighted = (np.asarray(x[block])[order] * w[block][order, None]).astype(np.float64)
        sums[sorted_labels[starts]] += np.add.reduceat(weighted, starts, axis=0)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _per_class_top(values: np.ndarray, labels: np.ndarray, num_classes: int, keep: float) -> np.ndarray:
    """(N,) bool: within each class, the ceil(keep * n_c) rows with the highest values (ties: lower row first)."""
    order = np.lexsort((-values, labels))  # by class, then by value descending
    counts = np.bincount(labels, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(values), np.int64)
    rank[order] = np.arange(len(values)) - np.repeat(starts, counts)
    return rank < np.ceil(keep * counts[labels])


def trimmed_class_core(x: np.ndarray, labels: np.ndarray, *, num_classes: int, keep: float,
                       iterations: int) -> np.ndarray:
    """(N,) bool: each class's trimmed core. x (N, D) unit rows, labels (N,).

    Starts from every row; each iteration keeps the `keep` fraction of each class most similar (cosine) to the
    mean of its current core. With less than (1 - keep) noise per class, the core is the clean majority,
    whatever the noisy images look like. iterations=0: every row.
    """
    if not 0.0 < keep <= 1.0 or iterations < 0:
        raise ValueError(f"Need 0 < keep <= 1 and iterations >= 0. Received keep={keep}, iterations={iterations}")
    labels = check_labels(labels, len(x), num_classes)
    members = np.ones(len(x), bool)
    for _ in range(iterations):
        means = class_means(x, labels, num_classes=num_classes, weights=members)
        own = np.empty(len(x), np.result_type(x.dtype, means.dtype))
        for start in range(0, len(x), BLOCK_ROWS):  # means[labels] of one block, not (N, D)
            block = slice(start, start + BLOCK_ROWS)
            own[block] = np.einsum("nd,nd->n", x[block], means[labels[block]])
        members = _per_class_top(own, labels, num_classes, keep)
    return members


def own_and_margin(similarity: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The own-class score and its margin to the best other class: (N, C), (N,) -> own (N,), margin (N,).

    own_i = s_{i, y_i}; margin_i = own_i - max_{c != y_i} s_{i, c}. Same dtype as `similarity` (not modified).
    """
    rows = np.arange(len(similarity))
    own = similarity[rows, labels]
    others = similarity.copy()
    others[rows, labels] = -np.inf
    return own, own - others.max(axis=1)
