"""Per-class reference sets: k-means++ centres of each class's features (paper section 3.1, reference note section 4).

For every class c, k-means with k-means++ initialisation runs on the raw features of all rows labelled c
(noisy labels included) and its K centres become the class's reference set V_c^s. Classes are processed one
at a time, so peak memory is bounded by one class, whatever the table size: with the default float32 backend,
about n_c x (D + 2 x n_init x K) x 4 bytes with n_c <= `max_samples_per_class` (the gathered features, centred in
place, and the distance matrices of all restarts), plus the (C, K, D) result. With the scikit-learn backend, about
2 x n_c x D x 4 bytes (one same-size temporary made by scikit-learn's `np.var` for the tolerance).

The float32 backend (`kmeans_float32`) runs scikit-learn's algorithm (greedy k-means++, Lloyd, the same `tol`)
vectorised over all restarts with float32 sgemm; scikit-learn's k-means++ computes its distances in float64,
which made it 93% of the time. `kmeans_sklearn` is kept as the checked fallback (`kmeans_backend="sklearn"`).

Differences from the original OpenCV `cv2.kmeans(attempts=10, max_iter=50, eps=1e-4, KMEANS_PP_CENTERS)`:
scikit-learn's (and so our) `tol` is relative (Frobenius norm of the centre shift compared with `tol` x the mean
per-feature variance of the data) where OpenCV's eps is an absolute centre shift; both give the same algorithm,
not the same centres.

Imports `data`, `features.kmeans`, `ops`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from cleannet_tf import atomic_io, ops
from cleannet_tf.data.features_npz import load_npz
from cleannet_tf.features.kmeans import KMEANS_BACKENDS, kmeans_float32, kmeans_sklearn

GatherFn = Callable[[np.ndarray], np.ndarray]

_ARRAYS = ("references", "counts", "class_names", "num_images")
_FINITE_CHUNK_ROWS = 4096


@dataclasses.dataclass
class ReferenceSets:
    """Reference sets of C classes, K slots each, D-dimensional features.

    Attributes:
        references: (C, K, D) float32 centres. When a class has fewer than K distinct feature vectors, its
            `counts[c]` real vectors fill the first slots and the remaining slots repeat them cyclically.
        counts: (C,) int32 number of distinct real centres per class (K unless the class was small).
        class_names: C class names, index = class id.
        num_images: (C,) int64 images per class used (after sampling).
        metadata: build settings (seed, K, n_init, max_iter, tol, max_samples_per_class, ...).
    """

    references: np.ndarray
    counts: np.ndarray
    class_names: tuple[str, ...]
    num_images: np.ndarray
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return int(self.references.shape[0])

    @property
    def num_references(self) -> int:
        return int(self.references.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.references.shape[2])

    def save(self, path: str) -> None:
        """Writes an .npz (arrays `references`, `counts`, `class_names`, `num_images`, `metadata` JSON string).

        Written under a temporary name in the same folder, then renamed: a reader never sees a partial file.
        """
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        with atomic_io.atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                references=np.asarray(self.references, dtype=np.float32),
                counts=np.asarray(self.counts, dtype=np.int32),
                class_names=np.asarray([str(n) for n in self.class_names], dtype=str),
                num_images=np.asarray(self.num_images, dtype=np.int64),
                metadata=np.asarray(json.dumps(self.metadata, sort_keys=True)),
            )

    @classmethod
    def load(cls, path: str) -> ReferenceSets:
        """Reads a file written by `save`.

        Raises:
            FileNotFoundError: no file at `path`.
            ValueError: the file lacks one of the arrays or their shapes disagree.
        """
        if not os.path.exists(path):
            raise FileNotFoundError(f"No reference-set file at {path}: build it with build_reference_sets.")
        data = load_npz(path, fix="Delete it and rerun cleannet-refs.")
        missing = [name for name in _ARRAYS if name not in data]
        if missing:
            raise ValueError(
                f"Reference-set file {path} lacks array(s) {missing} (has {sorted(data)}): "
                "not a file written by ReferenceSets.save, or written by an older version."
            )
        references = data["references"].astype(np.float32, copy=False)
        counts = data["counts"].astype(np.int32, copy=False)
        class_names = tuple(str(n) for n in data["class_names"])
        num_images = data["num_images"].astype(np.int64, copy=False)
        metadata = json.loads(str(data["metadata"])) if "metadata" in data else {}
        num_classes = len(class_names)
        if references.ndim != 3 or references.shape[0] != num_classes or counts.shape != (num_classes,) or (
            num_images.shape != (num_classes,)
        ):
            raise ValueError(
                f"Reference-set file {path} is inconsistent: references {references.shape}, counts {counts.shape}, "
                f"num_images {num_images.shape}, {num_classes} class names."
            )
        return cls(references=references, counts=counts, class_names=class_names, num_images=num_images,
                   metadata=metadata)


def _class_seeds(seed: int, class_id: int) -> tuple[np.random.Generator, int]:
    """Independent sampling generator and k-means `random_state` for one class (stable across C and N)."""
    sample_seq, kmeans_seq = np.random.SeedSequence([seed, class_id]).spawn(2)
    return np.random.default_rng(sample_seq), int(kmeans_seq.generate_state(1, dtype=np.uint32)[0])


def _first_nonfinite_row(x: np.ndarray) -> tuple[int, int]:
    """(number of rows with NaN/Inf, index of the first one or -1), checked in chunks to bound memory."""
    bad_rows, first = 0, -1
    for start in range(0, len(x), _FINITE_CHUNK_ROWS):
        bad = ~np.isfinite(x[start:start + _FINITE_CHUNK_ROWS]).all(axis=1)
        if bad.any():
            bad_rows += int(bad.sum())
            if first < 0:
                first = start + int(np.argmax(bad))
    return bad_rows, first


def _distinct_rows(x: np.ndarray) -> np.ndarray:
    """Distinct rows of (n, D) `x` in first-occurrence order (-0.0 and 0.0 count as equal)."""
    x = np.ascontiguousarray(x + np.float32(0.0))  # + 0.0 turns -0.0 into 0.0 (a copy; x is small or rare here)
    rows = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    return x[np.sort(first)]


def _fewer_distinct_than(x: np.ndarray, k: int) -> np.ndarray | None:
    """The distinct rows of `x` when there are fewer than `k`, else None.

    Exact, and cheap in the usual case: when the first 4k rows already hold k distinct vectors, the full
    (sort-based) distinct count is skipped.
    """
    if len(x) >= k and len(_distinct_rows(x[:4 * k])) >= k:
        return None
    distinct = _distinct_rows(x)
    return distinct if len(distinct) < k else None


def _fill_cyclic(distinct: np.ndarray, k: int) -> np.ndarray:
    """(k, D): the m distinct rows, then repeated cyclically (slot j holds row j mod m)."""
    return distinct[np.arange(k) % len(distinct)]


def _own_writable(x: np.ndarray) -> np.ndarray:
    """`x` as a float32 C-contiguous array this module may modify in place (copies views, memmaps, other dtypes)."""
    if (
        type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.owndata
        and x.flags.writeable
    ):
        return x
    return np.array(x, dtype=np.float32, order="C", copy=True)


def core_rows(x: np.ndarray, core_fraction: float, *, iterations: int = 3) -> np.ndarray:
    """Indices of the `core_fraction` of a class's images nearest its clean majority: (n, D) -> (m,) sorted.

    Nearness is cosine on ln(1 + x) features to a trimmed mean: the class mean,
    then `iterations` times the mean of the current core. Far-off groups of
    noisy images fall outside the core, so k-means on the core spends no
    centre on them (plain k-means gives every far-off group its own centre,
    and a small class's reference set is then mostly noise).
    """
    # The first trim is against the mean of every image, then `iterations` times against the current core's.
    core = ops.trimmed_class_core(ops.log_normalize(x), np.zeros(len(x), np.int64), num_classes=1,
                                  keep=core_fraction, iterations=iterations + 1)
    return np.nonzero(core)[0]


def build_reference_sets(
    gather_features: GatherFn,
    labels: np.ndarray,
    valid: np.ndarray,
    class_names: Sequence[str],
    *,
    num_references: int = 32,
    n_init: int = 10,
    max_iter: int = 50,
    tol: float = 1e-4,
    max_samples_per_class: int = 50000,
    seed: int = 0,
    core_fraction: float = 1.0,
    progress: bool = True,
    kmeans_backend: str = "float32",
) -> ReferenceSets:
    """Builds per-class reference sets with k-means++ and Lloyd iterations, one class at a time.

    Args:
        gather_features: `rows` (n,) int64 sorted -> (n, D) float32 features of those rows. Called once per class
            with that class's rows (after sampling). It must return a new array each call (fancy indexing and
            `FeatureStore.gather` do): the builder centres it in place for k-means to avoid a second copy.
            Views, memory maps and non-float32 results are copied first.
        labels: (N,) int class id of every row.
        valid: (N,) bool rows to use (rows with features, in the wanted splits). Valid rows must have labels in
            [0, C).
        class_names: C names; the class ids are their indices.
        num_references: K, centres per class.
        n_init, max_iter, tol: k-means restarts (best inertia kept), Lloyd iterations, relative tolerance.
        max_samples_per_class: classes with more valid rows use a seeded uniform sample of this many rows
            (without replacement); 0 means no cap.
        seed: non-negative; the sample and the k-means seed of class c derive from (seed, c), so a class's result
            does not depend on the other classes.
        core_fraction: in (0, 1]. Below 1 (the "robust" mode), k-means runs on that fraction of each class
            nearest its trimmed mean (`core_rows`); 1 is the paper's k-means on every image of the class.
        progress: show a tqdm bar over classes.
        kmeans_backend: "float32" (`kmeans_float32`, vectorised NumPy/BLAS) or "sklearn" (`kmeans_sklearn`, the
            checked fallback); the same algorithm and settings.

    Returns:
        ReferenceSets with references (C, K, D) float32. A class with fewer than K distinct feature vectors gets
        those vectors (in row order) as centres, `counts[c]` = their number, and the rest of its K slots
        repeat them cyclically.

    Raises:
        ValueError: bad arguments; a class with no valid row (names the class and its invalid row count);
            NaN/Inf features in a class; `gather_features` returning the wrong shape.
    """
    labels = np.asarray(labels)
    valid = np.asarray(valid, dtype=bool)
    class_names = tuple(str(n) for n in class_names)
    num_classes = len(class_names)
    k = int(num_references)
    if labels.ndim != 1 or valid.shape != labels.shape:
        raise ValueError(f"labels and valid must both be (N,). Received {labels.shape} and {valid.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers. Received dtype {labels.dtype}.")
    if num_classes == 0:
        raise ValueError("class_names is empty.")
    if k < 1 or n_init < 1 or max_iter < 1 or tol < 0:
        raise ValueError(
            f"Need num_references >= 1, n_init >= 1, max_iter >= 1, tol >= 0. Received {k}, {n_init}, {max_iter}, "
            f"{tol}."
        )
    if not 0.0 < core_fraction <= 1.0:
        raise ValueError(f"core_fraction must be in (0, 1]. Received {core_fraction}.")
    if kmeans_backend not in KMEANS_BACKENDS:
        raise ValueError(f"kmeans_backend must be one of {KMEANS_BACKENDS}. Received {kmeans_backend!r}.")
    kmeans = kmeans_float32 if kmeans_backend == "float32" else kmeans_sklearn
    if max_samples_per_class < 0 or seed < 0:
        raise ValueError(f"Need max_samples_per_class >= 0 and seed >= 0. Received {max_samples_per_class}, {seed}.")

    used_rows = np.flatnonzero(valid)
    used_labels = labels[used_rows]
    out_of_range = (used_labels < 0) | (used_labels >= num_classes)
    if out_of_range.any():
        bad = int(np.argmax(out_of_range))
        raise ValueError(
            f"{int(out_of_range.sum())} valid row(s) have labels outside [0, {num_classes}), e.g. row "
            f"{int(used_rows[bad])} with label {int(used_labels[bad])}."
        )
    # Rows of each class, ascending: a stable sort by label keeps row order within a class.
    order = np.argsort(used_labels, kind="stable")
    rows_by_label = used_rows[order]
    bounds = np.concatenate([[0], np.cumsum(np.bincount(used_labels, minlength=num_classes))])
    del order, used_labels, used_rows
    invalid_labels = labels[~valid]
    invalid_counts = np.bincount(
        invalid_labels[(invalid_labels >= 0) & (invalid_labels < num_classes)], minlength=num_classes
    )

    from tqdm import tqdm

    counts = np.zeros(num_classes, dtype=np.int32)
    num_images = np.zeros(num_classes, dtype=np.int64)
    references: np.ndarray | None = None
    feature_dim = -1
    start_time = time.perf_counter()
    for c in tqdm(range(num_classes), desc="reference sets", unit="class", disable=None if progress else True):
        name = class_names[c]
        rows = rows_by_label[bounds[c]:bounds[c + 1]]
        if len(rows) == 0:
            raise ValueError(
                f"Class {c} ({name!r}) has no usable row: {int(invalid_counts[c])} of its rows are invalid "
                "(no features, e.g. unreadable images) or excluded. Every class needs at least one."
            )
        rng, kmeans_seed = _class_seeds(seed, c)
        if max_samples_per_class and len(rows) > max_samples_per_class:
            rows = rows[np.sort(rng.choice(len(rows), size=max_samples_per_class, replace=False, shuffle=False))]
        rows = rows.astype(np.int64, copy=False)

        x = np.asarray(gather_features(rows))
        if x.ndim != 2 or x.shape[0] != len(rows) or (feature_dim >= 0 and x.shape[1] != feature_dim):
            expected = f"({len(rows)}, {feature_dim if feature_dim >= 0 else 'D'})"
            raise ValueError(f"gather_features returned shape {x.shape} for class {c} ({name!r}); expected {expected}.")
        if references is None:
            feature_dim = int(x.shape[1])
            references = np.zeros((num_classes, k, feature_dim), dtype=np.float32)
        x = _own_writable(x)
        bad_rows, first_bad = _first_nonfinite_row(x)
        if bad_rows:
            raise ValueError(
                f"Class {c} ({name!r}) has NaN/Inf features in {bad_rows} of {len(rows)} rows, e.g. row "
                f"{int(rows[first_bad])}."
            )

        if core_fraction < 1.0:
            x = np.ascontiguousarray(x[core_rows(x, core_fraction)])
        num_images[c] = len(x)
        distinct = _fewer_distinct_than(x, k)
        if distinct is not None:
            references[c] = _fill_cyclic(distinct, k)
            counts[c] = len(distinct)
        else:
            references[c], _ = kmeans(x, k, n_init=n_init, max_iter=max_iter, tol=tol, seed=kmeans_seed)
            counts[c] = k
        del x

    assert references is not None
    elapsed = time.perf_counter() - start_time
    logging.info(
        "Reference sets: %d classes x %d centres x %d dims from %d images in %.1f s (%d classes with fewer than K "
        "distinct images).", num_classes, k, feature_dim, int(num_images.sum()), elapsed, int((counts < k).sum()),
    )
    metadata = {
        "seed": int(seed), "K": k, "n_init": int(n_init), "max_iter": int(max_iter), "tol": float(tol),
        "max_samples_per_class": int(max_samples_per_class), "core_fraction": float(core_fraction),
        "algorithm": ("float32 k-means++ (greedy) + lloyd" if kmeans_backend == "float32"
                      else "sklearn KMeans k-means++ (lloyd)"),
        "kmeans_backend": kmeans_backend,
    }
    return ReferenceSets(references=references, counts=counts, class_names=class_names, num_images=num_images,
                         metadata=metadata)
