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
from cleannet_tf.feature_store import load_npz

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


KMEANS_BACKENDS = ("float32", "sklearn")


def _squared_distances(a: np.ndarray, x: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    """(m, n) float32 squared Euclidean distances of rows of (m, D) `a` to rows of (n, D) `x`, >= 0.

    ||a||^2 - 2 a.x + ||x||^2 with one sgemm; `x_sq` is (n,) ||x||^2.
    """
    out = a @ x.T
    out *= np.float32(-2.0)
    out += np.einsum("ij,ij->i", a, a)[:, None]
    out += x_sq[None, :]
    return np.maximum(out, np.float32(0.0), out=out)


def _kmeans_plusplus(x: np.ndarray, x_sq: np.ndarray, k: int, restarts: int, rng: np.random.Generator,
                     trials: int) -> np.ndarray:
    """Greedy k-means++ seeding (as scikit-learn's: `trials` D^2-sampled candidates per centre, keep the one that
    lowers the potential most) for `restarts` independent restarts at once: (n, D) float32 -> (restarts, k, D)
    float32 centres (rows of `x`)."""
    n = len(x)
    index = np.empty((restarts, k), dtype=np.int64)
    index[:, 0] = rng.integers(n, size=restarts)
    closest = _squared_distances(x[index[:, 0]], x, x_sq)  # (R, n)
    every = np.arange(restarts)
    for j in range(1, k):
        cumulative = np.cumsum(closest, axis=1, dtype=np.float64)  # (R, n)
        targets = rng.random((restarts, trials)) * cumulative[:, -1:]
        candidates = np.stack([np.searchsorted(cumulative[r], targets[r]) for r in range(restarts)])
        np.minimum(candidates, n - 1, out=candidates)
        distances = _squared_distances(x[candidates.ravel()], x, x_sq).reshape(restarts, trials, n)
        np.minimum(distances, closest[:, None, :], out=distances)
        best = np.argmin(distances.sum(axis=2, dtype=np.float64), axis=1)  # (R,) candidate with the lowest potential
        closest = distances[every, best]
        index[:, j] = candidates[every, best]
    return x[index]


def _assign(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre of every row for each of R centre sets: (n, D), (R, K, D) -> labels (R, n) int64 and squared
    distances (R, n) float32 (>= 0)."""
    restarts, k, dim = centres.shape
    flat = centres.reshape(restarts * k, dim)
    scores = x @ flat.T  # (n, R*K): ||c||^2 - 2 x.c ranks the centres; ||x||^2 is added back to the minimum only
    scores *= np.float32(-2.0)
    scores += np.einsum("ij,ij->i", flat, flat)[None, :]
    scores = scores.reshape(len(x), restarts, k)
    labels = np.argmin(scores, axis=2)  # (n, R)
    nearest = np.take_along_axis(scores, labels[:, :, None], axis=2)[:, :, 0] + x_sq[:, None]
    return labels.T.copy(), np.maximum(nearest, np.float32(0.0)).T.copy()


def _update_centres(x: np.ndarray, labels: np.ndarray, nearest: np.ndarray, k: int) -> np.ndarray:
    """Lloyd's M-step for R label sets: (n, D), labels (R, n) -> (R, k, D) float32 means.

    An empty cluster takes the row farthest from its centre (that row leaves its old cluster's sum), as
    scikit-learn relocates them.
    """
    import scipy.sparse

    restarts, n = labels.shape
    flat = (labels + (np.arange(restarts) * k)[:, None]).ravel()
    members = scipy.sparse.csr_matrix((np.ones(flat.size, np.float32), (flat, np.tile(np.arange(n), restarts))),
                                      shape=(restarts * k, n))
    sums = np.asarray(members @ x, dtype=np.float32).reshape(restarts, k, -1)
    counts = np.bincount(flat, minlength=restarts * k).reshape(restarts, k).astype(np.float32)
    for r in np.flatnonzero((counts == 0).any(axis=1)):
        empty = np.flatnonzero(counts[r] == 0)
        far = np.argsort(-nearest[r], kind="stable")[:len(empty)]
        for cluster, row in zip(empty, far, strict=True):
            sums[r, labels[r, row]] -= x[row]
            counts[r, labels[r, row]] -= 1
            sums[r, cluster] = x[row]
            counts[r, cluster] = 1
    return sums / np.maximum(counts, np.float32(1.0))[:, :, None]


def kmeans_float32(x: np.ndarray, k: int, *, n_init: int = 10, max_iter: int = 50, tol: float = 1e-4,
                   seed: int = 0, local_trials: int | None = None) -> tuple[np.ndarray, float]:
    """k-means++ then Lloyd, all restarts at once in float32 with BLAS: (n, D) float32 -> ((k, D) centres, inertia).

    The algorithm of scikit-learn's `KMeans(init="k-means++", algorithm="lloyd")`: greedy k-means++ seeding,
    Lloyd iterations until the labels stop changing or the squared centre shift is <= `tol` x the mean
    per-feature variance, best of `n_init` restarts by inertia (sum of squared distances to the nearest centre).
    One difference: the greedy seeding tries `local_trials` candidates per centre, by default 2 + int(3 ln k)
    (12 for k=32) where scikit-learn tries 2 + int(ln k) (5): on benchmarks/kmeans.py's data the inertia is then
    about 1% below scikit-learn's on every class, for about twice the seeding time (with 2 + int(ln k), level with
    it on average). `x` is centred in place (its mean is added back) and needs n >= k distinct rows. Memory: the
    n x n_init x k float32 distance matrix besides `x`. Deterministic for a seed (and BLAS thread count).
    """
    if x.dtype != np.float32 or x.ndim != 2 or len(x) < k:
        raise ValueError(f"kmeans_float32 needs (n >= k={k}, D) float32 rows. Received {x.shape} {x.dtype}.")
    rng = np.random.default_rng(seed)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    x -= mean
    x_sq = np.einsum("ij,ij->i", x, x)
    threshold = tol * float(x_sq.sum(dtype=np.float64)) / x.size  # tol x mean per-feature variance
    trials = 2 + int(3 * np.log(k)) if local_trials is None else int(local_trials)
    centres = _kmeans_plusplus(x, x_sq, k, n_init, rng, trials)
    previous = np.full((n_init, len(x)), -1, dtype=np.int64)
    active = np.arange(n_init)
    for _ in range(max_iter):
        labels, nearest = _assign(x, x_sq, centres[active])
        updated = _update_centres(x, labels, nearest, k)
        shift = ((updated - centres[active]) ** 2).sum(axis=(1, 2), dtype=np.float64)
        unchanged = (labels == previous[active]).all(axis=1)
        centres[active] = updated
        previous[active] = labels
        active = active[~(unchanged | (shift <= threshold))]
        if not len(active):
            break
    _, nearest = _assign(x, x_sq, centres)  # labels of the final centres
    inertia = nearest.sum(axis=1, dtype=np.float64)
    best = int(np.argmin(inertia))
    x += mean
    return centres[best] + mean, float(inertia[best])


def kmeans_sklearn(x: np.ndarray, k: int, *, n_init: int = 10, max_iter: int = 50, tol: float = 1e-4,
                   seed: int = 0) -> tuple[np.ndarray, float]:
    """The same k-means with scikit-learn's `KMeans` (the checked fallback): ((k, D) float32 centres, inertia).

    `x` is centred in place during the fit (`copy_x=False`) and restored.
    """
    from sklearn.cluster import KMeans  # deferred: scikit-learn is only needed here

    kmeans = KMeans(n_clusters=k, init="k-means++", n_init=n_init, max_iter=max_iter, tol=tol, random_state=seed,
                    copy_x=False)
    kmeans.fit(x)
    return kmeans.cluster_centers_.astype(np.float32, copy=False), float(kmeans.inertia_)


def references_path(workdir: str) -> str:
    """Where cleannet-refs writes: WORKDIR/references.npz."""
    return os.path.join(workdir, "references.npz")


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
