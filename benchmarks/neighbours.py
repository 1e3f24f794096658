"""Benchmark: the kNN label-agreement signal at scale (neighbours.py), approximate against exact in the same run.

Writes N x D synthetic clustered float32 features (pool5-like: ReLU of a `--latent`-dim Gaussian mixture with
`--clusters` components, plus noise; labels = component, `--noise` of them flipped) to a .npy on disk in chunks,
then reads it through a memory map and
  1. builds the approximate index of nearest_neighbours(method="faiss") (neighbours.ApproximateIndex, timed) and
     searches it for every row, or for `--approx_queries` sampled rows (timed, extrapolated to N);
  2. runs exact search (the O(N^2) baseline) for `--exact_queries` of those rows (timed, extrapolated to N);
  3. prints recall@k of 1. against 2. on those rows, how far the kNN agreement signals differ there, the ROC-AUC
     of the signal against the planted flips, wall and CPU times and peak memory.

    python benchmarks/neighbours.py                             # 1M x 1280 (a 5.1 GB file in --scratch)
    python benchmarks/neighbours.py --approx_queries=50000     # the same, 50k rows searched, extrapolated
    python benchmarks/neighbours.py --n=200000 --exact_queries=2000
    python benchmarks/neighbours.py --n=20000 --dim=64          # quick look

Peak RSS counts the memory-mapped file's pages the process touched (the kernel may drop them); "anonymous" is the
sampled peak of the process's own memory (RssAnon), what the search allocates.
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

from cleannet_tf.features import neighbours

_N = flags.DEFINE_integer("n", 1_000_000, "Rows.")
_DIM = flags.DEFINE_integer("dim", 1280, "Feature dimension.")
_LATENT = flags.DEFINE_integer("latent", 256, "Dimension of the Gaussian mixture before the ReLU projection.")
_CLUSTERS = flags.DEFINE_integer("clusters", 1000, "Mixture components (= classes).")
_SPREAD = flags.DEFINE_float("spread", 1.0, "Standard deviation of a component around its N(0, 1) centre.")
_NOISE = flags.DEFINE_float("noise", 0.2, "Share of labels flipped to another class.")
_K = flags.DEFINE_integer("k", 10, "Neighbours.")
_EXACT_QUERIES = flags.DEFINE_integer("exact_queries", 1000, "Rows searched exactly (baseline and recall).")
_APPROX_QUERIES = flags.DEFINE_integer("approx_queries", 0, "Rows searched in the index (0: all; else the "
                                       "search time is extrapolated to N; at least --exact_queries).")
_REDUCE_DIM = flags.DEFINE_integer("reduce_dim", 256, "nearest_neighbours reduce_dim.")
_NPROBE = flags.DEFINE_integer("nprobe", 64, "nearest_neighbours nprobe.")
_NLIST = flags.DEFINE_integer("nlist", 0, "nearest_neighbours nlist (0: its default).")
_SCRATCH = flags.DEFINE_string("scratch", "", "Folder of the features file (default: the system temp folder).")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the features file (reused by a later run with the same flags).")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")

CHUNK_ROWS = 16384


class AnonPeak:
    """Samples RssAnon of this process every `interval` s in a thread; .peak in bytes."""

    def __init__(self, interval: float = 0.2):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval):
        while not self._stop.wait(interval):
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def write_features(path: str, n: int, dim: int, latent: int, clusters: int, spread: float, noise: float,
                   seed: int):
    """Writes (n, dim) float32 features to `path` (.npy) in chunks; returns labels (n,) and flipped (n,) bool."""
    rng = np.random.default_rng(seed)
    projection = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    centres = rng.standard_normal((clusters, latent)).astype(np.float32)
    true = rng.integers(0, clusters, n)
    flipped = rng.random(n) < noise
    labels = np.where(flipped, (true + rng.integers(1, clusters, n)) % clusters, true)
    if not os.path.exists(path):
        partial = f"{path}.{os.getpid()}.partial.npy"
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, dim))
        for start in range(0, n, CHUNK_ROWS):
            stop = min(n, start + CHUNK_ROWS)
            z = centres[true[start:stop]] + spread * rng.standard_normal((stop - start, latent), dtype=np.float32)
            out[start:stop] = np.maximum(z @ projection, 0) + 0.05 * rng.random((stop - start, dim), np.float32)
        out.flush()
        del out
        os.replace(partial, path)
    return labels, flipped


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def agreement(own: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Share of each query's neighbours (Q, k) whose label equals its own (Q,)."""
    return (labels[indices] == own[:, None]).mean(axis=1)


def main(argv) -> None:
    del argv
    from sklearn.metrics import roc_auc_score

    n, dim, k = _N.value, _DIM.value, _K.value
    folder = _SCRATCH.value or tempfile.gettempdir()
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"neighbours_{n}x{dim}_l{_LATENT.value}_c{_CLUSTERS.value}_sd{_SPREAD.value:g}_"
                                f"s{_SEED.value}.npy")
    print(f"{n} x {dim} float32 ({n * dim * 4 / 1e9:.1f} GB) in {path}; k={k}; {os.cpu_count()} CPUs", flush=True)
    start = time.perf_counter()
    existed = os.path.exists(path)
    labels, flipped = write_features(path, n, dim, _LATENT.value, _CLUSTERS.value, _SPREAD.value, _NOISE.value,
                                     _SEED.value)
    print(f"features {'reused' if existed else 'written'} in {time.perf_counter() - start:.0f} s", flush=True)
    features = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(_SEED.value + 1)
    exact_rows = np.sort(rng.choice(n, min(n, _EXACT_QUERIES.value), replace=False))
    queries = np.arange(n)
    if 0 < _APPROX_QUERIES.value < n:  # the exact rows and others: recall is measured on searched rows
        others = rng.choice(np.setdiff1d(np.arange(n), exact_rows), _APPROX_QUERIES.value - len(exact_rows),
                            replace=False)
        queries = np.sort(np.concatenate([exact_rows, others]))
    try:
        anon = AnonPeak()
        start, cpu = time.perf_counter(), cpu_seconds()
        index = neighbours.ApproximateIndex(features, index="ivf", reduce_dim=_REDUCE_DIM.value,
                                            nprobe=_NPROBE.value, nlist=_NLIST.value)
        build = time.perf_counter() - start, cpu_seconds() - cpu
        print(f"index built: {build[0]:.0f} s ({build[1]:.0f} CPU s), {index.index.nlist} lists", flush=True)
        start, cpu = time.perf_counter(), cpu_seconds()
        indices, _ = index.search(k, queries=queries)
        search = time.perf_counter() - start, cpu_seconds() - cpu
        approx_anon = anon.stop()
        del index
        print(f"searched {len(queries)} rows: {search[0]:.0f} s ({search[1]:.0f} CPU s)", flush=True)
        anon = AnonPeak()
        start, cpu = time.perf_counter(), cpu_seconds()
        exact, _ = neighbours.exact_search(features, k, queries=exact_rows)
        exact_time = time.perf_counter() - start, cpu_seconds() - cpu
        exact_anon = anon.stop()
    finally:
        del features
        if not _KEEP.value:
            os.remove(path)
    position = np.searchsorted(queries, exact_rows)
    recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(exact, indices[position], strict=True)]))
    signal = agreement(labels[queries], labels, indices)
    exact_signal = agreement(labels[exact_rows], labels, exact)
    scale = n / len(queries)
    total = build[0] + search[0] * scale, build[1] + search[1] * scale
    exact_total = exact_time[0] * n / len(exact_rows), exact_time[1] * n / len(exact_rows)
    searched = "every row" if len(queries) == n else f"{len(queries)} rows searched, extrapolated to {n}"
    print(f"\n| {n} x {dim}, k={k}, {os.cpu_count()} shared cores | wall time | CPU time | anonymous peak |")
    print("|---|---|---|---|")
    print(f"| faiss IVF-Flat ({_NPROBE.value} lists probed) on PCA-{_REDUCE_DIM.value} + exact re-rank: build | "
          f"{build[0]:.0f} s | {build[1]:.0f} s | {approx_anon / 1e9:.2f} GB |")
    print(f"| the same, search + re-rank of {len(queries)} rows | {search[0]:.0f} s | {search[1]:.0f} s | |")
    print(f"| **the kNN signal, every row ({searched})** | **{total[0]:.0f} s** | **{total[1]:.0f} s** | |")
    print(f"| exact (sgemm blocks), {len(exact_rows)} rows (baseline) | {exact_time[0]:.0f} s | {exact_time[1]:.0f} s"
          f" | {exact_anon / 1e9:.2f} GB |")
    print(f"| exact, every row (extrapolated) | {exact_total[0]:.0f} s ({exact_total[0] / 3600:.1f} h) | "
          f"{exact_total[1]:.0f} s | |")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\nrecall@{k} vs exact on {len(exact_rows)} rows: {recall:.3f}; kNN agreement signal there: mean |approx - "
          f"exact| {np.abs(signal[position] - exact_signal).mean():.4f}; ROC-AUC of the signal vs the planted flips "
          f"{roc_auc_score(~flipped[queries], signal):.3f} (searched rows), exact "
          f"{roc_auc_score(~flipped[exact_rows], exact_signal):.3f} (its rows); speed-up "
          f"{exact_total[0] / total[0]:.0f}x wall, {exact_total[1] / total[1]:.0f}x CPU; peak RSS {peak / 1e9:.2f} GB "
          f"(with the mapped file's pages)")


if __name__ == "__main__":
    app.run(main)
