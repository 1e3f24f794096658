"""k-means for the reference sets: a float32 k-means++ / Lloyd in NumPy (one sgemm per iteration) and scikit-learn's.

(n, D) float32 rows in, (k, D) centres and the inertia out. Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np

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
