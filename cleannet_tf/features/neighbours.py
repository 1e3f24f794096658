"""Nearest neighbours by cosine similarity: the one owner of kNN search in the project.

    indices, similarities = nearest_neighbours(features, k=10)     # (N, k) int64, (N, k) float32

Rows are L2-normalised here; neighbours are ranked by cosine similarity, most similar first. Two methods:

    exact   every row against every row, `block_rows` query rows at a time (one sgemm and one argpartition per
            block; memory about block_rows x N floats, never N x N). O(N^2 D): right below ~50k rows.
    faiss   approximate (faiss-cpu, the `scale` extra): the rows are projected on their top `reduce_dim`
            principal directions (centred covariance of a sample; L2 distances between rows are what the
            projection keeps), a faiss index of them (index="hnsw", the default: an HNSW graph, IndexHNSWFlat,
            `ef_search` candidates kept while searching; index="ivf": IVF-Flat, a k-means coarse quantiser,
            `nprobe` lists searched per query) returns `candidates` rows per query in that space, and those are
            re-ranked by their exact cosine in the full space. Memory: N x reduce_dim floats (the index) plus one
            block. On 10^6 real-looking rows both reach recall@10 0.996; HNSW in 0.6x IVF's CPU time
            (docs/performance.md).

"auto" is exact up to EXACT_MAX_ROWS rows and faiss above (exact, with a warning, when faiss is not
installed). Both are deterministic for a given seed and thread count. ApproximateIndex is the faiss index,
built once and searched for any query rows; recall_at_k measures an approximate result against exact search on
a sample of query rows.

Recall is checked, not assumed: before the faiss search of every row, nearest_neighbours measures recall@k on
`recall_sample` rows against exact search and doubles the search effort (HNSW efSearch, IVF nprobe) until it
reaches `target_recall` (ApproximateIndex.tune). Features whose graph is hard to search (isotropic clusters:
recall@10 0.76 at efSearch 64 on 1M synthetic rows, graph built at efConstruction 80; 0.95 at efSearch 128
on a graph built at 256) cost more search time instead of losing neighbours.

Imports `ops`.
"""

from __future__ import annotations

import numpy as np
from absl import logging

from cleannet_tf import ops

METHODS = ("auto", "exact", "faiss")
INDEXES = ("ivf", "hnsw")  # the faiss index of the projected rows
EXACT_MAX_ROWS = 50_000
TARGET_RECALL = 0.95  # recall@k the faiss search effort is tuned to (nearest_neighbours)
RECALL_SAMPLE = 200  # rows searched exactly to measure it
MAX_EF_SEARCH = 2048  # the largest HNSW efSearch the tuning tries (IVF: every list probed)
# Candidates kept while inserting into the HNSW graph: a better graph costs build time once, and saves search
# time on every row (1M isotropic synthetic rows: at 80, efSearch 2048 is needed for recall@10 0.97; at 256,
# efSearch 256 gives 0.977).
EF_CONSTRUCTION = 256
BLOCK_BYTES = 1 << 27  # 128 MB of similarities per exact block (peak about 4x: the top-k selection)


def _check(features, k: int, exclude_self: bool) -> tuple[int, int]:
    if getattr(features, "ndim", None) != 2:
        raise ValueError(f"features must be a 2-D (N, D) array. Received shape {getattr(features, 'shape', None)}")
    n, d = features.shape
    if not 1 <= k <= n - int(exclude_self):
        raise ValueError(f"k must be in [1, {n - int(exclude_self)}] for N={n} rows"
                         f"{' (self excluded)' if exclude_self else ''}. Received k={k}")
    return n, d


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def nearest_neighbours(features: np.ndarray, k: int, *, exclude_self: bool = True, method: str = "auto",
                       block_rows: int = 0, exact_max_rows: int = EXACT_MAX_ROWS, reduce_dim: int = 256,
                       nlist: int = 0, nprobe: int = 64, candidates: int = 0, pca_rows: int = 20_000,
                       seed: int = 0, index: str = "hnsw", hnsw_m: int = 16, ef_search: int = 64,
                       ef_construction: int = EF_CONSTRUCTION, target_recall: float = TARGET_RECALL,
                       recall_sample: int = RECALL_SAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar rows of every row: (N, D) -> indices (N, k) int64, similarities (N, k) float32.

    Args:
        features: (N, D) float rows (any norm; a np.memmap is read block by block).
        k: neighbours per row. exclude_self: a row is not its own neighbour (other identical rows still are).
        method: "auto", "exact" or "faiss" (see the module docstring).
        block_rows: query rows per block (0: about BLOCK_BYTES of similarities per exact block, 1024 for faiss).
        exact_max_rows: the largest N that "auto" searches exactly.
        reduce_dim: faiss: dimensions kept by the projection (0 or >= D: none).
        nlist, nprobe: faiss, index="ivf": inverted lists (0: about 4 sqrt(N)) and lists searched per query. Probing is
            what recall depends on: on 20k ImageNet EfficientNet-Lite0 features of CIFAR photos (500 lists),
            recall@10 0.86 with 16 probed, 0.98 with 64; PCA-256 and 30 candidates cost under 0.01 of it.
        candidates: faiss: rows per query re-ranked exactly (0: max(3k, k + 10)).
        pca_rows: faiss: rows sampled for the projection (the quantiser's k-means sees 40 x nlist rows).
        seed: faiss: the samples and the quantiser's k-means.
        index: faiss: "hnsw" (IndexHNSWFlat, hnsw_m links per row, ef_construction candidates kept while
            inserting (0: EF_CONSTRUCTION; at least ef_search), ef_search while searching;
            built on one thread, as a parallel insertion is not deterministic; searched on all) or "ivf"
            (IVF-Flat, nlist / nprobe). Recall@10 on 25k real features: 0.995 (hnsw), 0.974 (ivf, 64 probed).
        target_recall: faiss: recall@k the search effort is raised to (ApproximateIndex.tune, measured on
            recall_sample rows against exact search); 0: search at ef_search / nprobe as given.
    Returns:
        indices (N, k) int64 and similarities (N, k) float32, each row by decreasing similarity.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received {method!r}")
    n, _ = _check(features, k, exclude_self)
    if method == "auto":
        method = "exact" if n <= exact_max_rows else "faiss"
        if method == "faiss" and not faiss_available():
            logging.warning("faiss-cpu is not installed (pip install 'cleannet_tf[scale]'): exact kNN search of %d "
                            "rows, O(N^2).", n)
            method = "exact"
    if method == "exact":
        return exact_search(features, k, exclude_self=exclude_self, block_rows=block_rows)
    approximate = ApproximateIndex(features, reduce_dim=reduce_dim, nlist=nlist, nprobe=nprobe, pca_rows=pca_rows,
                                   block_rows=block_rows or 1024, seed=seed, index=index, hnsw_m=hnsw_m,
                                   ef_search=ef_search, ef_construction=ef_construction)
    if target_recall > 0:
        approximate.tune(k, target_recall=target_recall, sample=recall_sample, exclude_self=exclude_self,
                         candidates=candidates, seed=seed)
    return approximate.search(k, exclude_self=exclude_self, candidates=candidates)


def _top_k(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, M) similarities -> positions (B, k) and values (B, k) of the k largest, by decreasing value."""
    part = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    values = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(values, order, axis=1)


def exact_search(features: np.ndarray, k: int, *, exclude_self: bool = True, block_rows: int = 0,
                 queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact search of the rows `queries` (Q,) (None: all N) against every row: (Q, k) indices, similarities.

    Query blocks of block_rows rows against base chunks of rows (all N when they fit in BLOCK_BYTES), with a
    running top k: memory about 2 x BLOCK_BYTES whatever N.
    """
    n, d = features.shape
    queries = np.arange(n) if queries is None else np.asarray(queries, np.int64)
    chunk = max(k + 1, min(n, BLOCK_BYTES // (4 * d)))
    block_rows = block_rows or max(1, BLOCK_BYTES // (4 * chunk))
    base = ops.unit_rows(features, np.float32) if chunk >= n else None  # one chunk: normalised once
    indices = np.empty((len(queries), k), np.int64)
    similarities = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block_rows):
        rows = queries[start:start + block_rows]
        query = base[rows] if base is not None else ops.unit_rows(features[rows], np.float32)
        best_i = np.empty((len(rows), 0), np.int64)
        best_s = np.empty((len(rows), 0), np.float32)
        for first in range(0, n, chunk):
            sims = query @ (base if base is not None else ops.unit_rows(features[first:first + chunk], np.float32)).T
            if exclude_self:
                inside = (rows >= first) & (rows < first + len(sims[0]))
                sims[np.flatnonzero(inside), rows[inside] - first] = -np.inf
            positions, values = _top_k(sims, min(k, sims.shape[1]))
            del sims
            if best_i.shape[1]:  # merge with the best of the earlier chunks
                positions, values = first + positions, np.concatenate([best_s, values], axis=1)
                merged, best_s = _top_k(values, k)
                best_i = np.take_along_axis(np.concatenate([best_i, positions], axis=1), merged, axis=1)
            else:
                best_i, best_s = first + positions, values
        indices[start:start + len(rows)], similarities[start:start + len(rows)] = best_i, best_s
    return indices, similarities


def _projection(features, rows: np.ndarray, reduce_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean (D,) and top principal directions (D, reduce_dim) of the unit rows `rows`; None: no projection."""
    sample = ops.unit_rows(features[np.sort(rows)], np.float32)
    mean = sample.mean(axis=0)
    if not reduce_dim or reduce_dim >= sample.shape[1]:
        return mean, None
    sample -= mean
    _, vectors = np.linalg.eigh((sample.T @ sample).astype(np.float64))
    return mean, np.ascontiguousarray(vectors[:, ::-1][:, :reduce_dim], dtype=np.float32)


class ApproximateIndex:
    """The faiss search of nearest_neighbours, built once and searched for any query rows.

    Build: the projection (on `pca_rows` sampled rows), then the index of every projected row: IVF-Flat (its
    coarse quantiser trained on 40 x nlist sampled rows) or HNSW (index="hnsw"). Memory: N x reduce_dim floats
    (HNSW: plus 2 hnsw_m links per row) plus one block.
    Arguments as nearest_neighbours'.
    """

    def __init__(self, features: np.ndarray, *, reduce_dim: int = 256, nlist: int = 0, nprobe: int = 64,
                 pca_rows: int = 20_000, block_rows: int = 1024, seed: int = 0, index: str = "hnsw",
                 hnsw_m: int = 16, ef_search: int = 64, ef_construction: int = 0):
        if not faiss_available():
            raise ImportError("method='faiss' needs faiss-cpu: pip install 'cleannet_tf[scale]'")
        import faiss

        self.features = features
        self.block_rows = block_rows
        n = len(features)
        rng = np.random.default_rng(seed)
        self.mean, self.directions = _projection(features, rng.choice(n, min(n, pca_rows), replace=False),
                                                 reduce_dim)
        dim = len(self.mean) if self.directions is None else self.directions.shape[1]
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}. Received {index!r}")
        self.kind = index
        if index == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_L2)
            self.index.hnsw.efConstruction = max(ef_construction or EF_CONSTRUCTION, ef_search)
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)  # the graph of a parallel insertion depends on the threads' timing
            try:
                for start in range(0, n, 16 * block_rows):
                    self.index.add(self._reduced(slice(start, start + 16 * block_rows)))
            finally:
                faiss.omp_set_num_threads(threads)
            self.index.hnsw.efSearch = ef_search
            return
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 40))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
        self.index.cp.seed = seed
        self.index.cp.niter = 10
        self.index.train(self._reduced(np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))))
        for start in range(0, n, block_rows):
            self.index.add(self._reduced(slice(start, start + block_rows)))
        self.index.nprobe = min(nprobe, nlist)

    @property
    def effort(self) -> int:
        """The search effort: HNSW efSearch or IVF nprobe."""
        return int(self.index.hnsw.efSearch if self.kind == "hnsw" else self.index.nprobe)

    def _set_effort(self, effort: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = effort
        else:
            self.index.nprobe = effort

    def tune(self, k: int, *, target_recall: float = TARGET_RECALL, sample: int = RECALL_SAMPLE,
             exclude_self: bool = True, candidates: int = 0, seed: int = 0) -> float:
        """Doubles the search effort until recall@k on `sample` rows against exact search reaches target_recall.

        The rows are drawn with `seed`; the effort stops at MAX_EF_SEARCH (HNSW) or every list (IVF), with a
        warning when the target is still not reached. Returns the recall of the effort kept (`effort`).
        """
        n = len(self.features)
        rows = np.sort(np.random.default_rng(seed + 1).choice(n, min(n, sample), replace=False))
        truth, _ = exact_search(self.features, k, exclude_self=exclude_self, queries=rows)
        cap = MAX_EF_SEARCH if self.kind == "hnsw" else self.index.nlist
        start = self.effort
        while True:
            found, _ = self.search(k, queries=rows, exclude_self=exclude_self, candidates=candidates)
            recall = _recall(truth, found)
            if recall >= target_recall or self.effort >= cap:
                break
            self._set_effort(min(2 * self.effort, cap))
        name = "efSearch" if self.kind == "hnsw" else "nprobe"
        if recall < target_recall:
            logging.warning("kNN search: recall@%d %.3f at %s %d (the most tried) is below the target %.2f.",
                            k, recall, name, self.effort, target_recall)
        else:
            logging.info("kNN search: recall@%d %.3f on %d rows at %s %d (from %d).", k, recall, len(rows), name,
                         self.effort, start)
        return recall

    def _reduced(self, rows) -> np.ndarray:
        block = ops.unit_rows(self.features[rows], np.float32) - self.mean
        return np.ascontiguousarray(block if self.directions is None else block @ self.directions,
                                    dtype=np.float32)

    def search(self, k: int, *, queries: np.ndarray | None = None, exclude_self: bool = True,
               candidates: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of the rows `queries` (Q,) (None: all N): (Q, k) int64 indices, (Q, k) float32 cosines.

        `candidates` rows per query (0: max(3k, k + 10)) come from the index and are re-ranked by their exact
        cosine in the full space; rows with fewer than k found are searched exactly.
        """
        features, n = self.features, len(self.features)
        _check(features, k, exclude_self)
        queries = np.arange(n) if queries is None else np.asarray(queries, np.int64)
        candidates = min((candidates or max(3 * k, k + 10)) + int(exclude_self), n)
        indices = np.empty((len(queries), k), np.int64)
        similarities = np.empty((len(queries), k), np.float32)
        short = []
        for start in range(0, len(queries), self.block_rows):
            rows = queries[start:start + self.block_rows]
            _, found = self.index.search(self._reduced(rows), candidates)
            query = ops.unit_rows(features[rows], np.float32)
            gathered = ops.unit_rows(features[np.maximum(found, 0).ravel()], np.float32).reshape(*found.shape, -1)
            sims = np.einsum("bd,bcd->bc", query, gathered)  # the exact cosines of the candidates
            sims[found < 0] = -np.inf
            if exclude_self:
                sims[found == rows[:, None]] = -np.inf
            positions, values = _top_k(sims, k)
            indices[start:start + len(rows)] = np.take_along_axis(found, positions, axis=1)
            similarities[start:start + len(rows)] = values
            short.extend(start + np.flatnonzero(~np.isfinite(values).all(axis=1)))
        if short:
            short = np.array(short)
            indices[short], similarities[short] = exact_search(features, k, exclude_self=exclude_self,
                                                               queries=queries[short])
        return indices, similarities


def recall_at_k(features: np.ndarray, indices: np.ndarray, *, exclude_self: bool = True, sample: int = 1000,
                seed: int = 0, exact: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Mean share of each sampled row's exact k nearest rows that `indices` (N, k) contains: in [0, 1].

    exact: (rows (S,), their exact indices (S, k)) when already computed; else `sample` rows drawn with `seed`.
    """
    n, k = indices.shape
    if exact is None:
        rows = np.sort(np.random.default_rng(seed).choice(n, min(n, sample), replace=False))
        exact = rows, exact_search(features, k, exclude_self=exclude_self, queries=rows)[0]
    rows, truth = exact
    return _recall(truth, indices[rows])


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean share of each row of truth (S, k) that the same row of found (S, k) holds."""
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(truth, found, strict=True)]))
