"""Benchmark: the kNN label-agreement signal at scale (neighbours.py), approximate against exact in the same run.

Writes N x D synthetic clustered float32 features (pool5-like: ReLU of a `--latent`-dim Gaussian mixture with
`--clusters` components, plus noise; labels = component, `--noise` of them flipped) to a .npy on disk in chunks,
then reads it through a memory map and
  1. runs nearest_neighbours(method="faiss") on every row and the kNN agreement signal from it (timed);
  2. runs exact search (the O(N^2) baseline) for `--exact_queries` sampled rows (timed, extrapolated to N);
  3. prints recall@k of 1. against 2. on those rows, how far the signals differ there, the ROC-AUC of the
     signal against the planted flips, wall times and peak memory.

    python benchmarks/neighbours.py                             # 1M x 1280 (a 5.1 GB file in --scratch)
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
_REDUCE_DIM = flags.DEFINE_integer("reduce_dim", 256, "nearest_neighbours reduce_dim.")
_NPROBE = flags.DEFINE_integer("nprobe", 16, "nearest_neighbours nprobe.")
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


def agreement(labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return (labels[indices] == labels[:, None]).mean(axis=1)


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
    try:
        anon = AnonPeak()
        start, cpu = time.perf_counter(), cpu_seconds()
        indices, _ = neighbours.nearest_neighbours(features, k, method="faiss", reduce_dim=_REDUCE_DIM.value,
                                                   nprobe=_NPROBE.value, nlist=_NLIST.value)
        signal = agreement(labels, indices)
        approx_seconds, approx_cpu = time.perf_counter() - start, cpu_seconds() - cpu
        approx_anon = anon.stop()
        print(f"faiss: {approx_seconds:.0f} s ({approx_cpu:.0f} CPU s), anonymous peak {approx_anon / 1e9:.2f} GB",
              flush=True)

        rows = np.sort(np.random.default_rng(_SEED.value + 1).choice(n, min(n, _EXACT_QUERIES.value),
                                                                   replace=False))
        anon = AnonPeak()
        start, cpu = time.perf_counter(), cpu_seconds()
        exact, _ = neighbours.exact_search(features, k, queries=rows)
        exact_seconds, exact_cpu = time.perf_counter() - start, cpu_seconds() - cpu
        exact_anon = anon.stop()
        recall = neighbours.recall_at_k(features, indices, exact=(rows, exact))
        exact_signal = (labels[exact] == labels[rows, None]).mean(axis=1)
    finally:
        del features
        if not _KEEP.value:
            os.remove(path)
    extrapolated, extrapolated_cpu = exact_seconds * n / len(rows), exact_cpu * n / len(rows)
    print(f"\n| {n} x {dim}, k={k}, {os.cpu_count()} cores | wall time | CPU time | anonymous peak |")
    print("|---|---|---|---|")
    print(f"| faiss IVF-Flat on PCA-{_REDUCE_DIM.value} + exact re-rank, every row | {approx_seconds:.0f} s | "
          f"{approx_cpu:.0f} s | {approx_anon / 1e9:.2f} GB |")
    print(f"| exact, {len(rows)} rows (baseline) | {exact_seconds:.0f} s | {exact_cpu:.0f} s | "
          f"{exact_anon / 1e9:.2f} GB |")
    print(f"| exact, every row (extrapolated) | {extrapolated:.0f} s ({extrapolated / 3600:.1f} h) | "
          f"{extrapolated_cpu:.0f} s | |")
    difference = np.abs(signal[rows] - exact_signal).mean()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"\nrecall@{k} vs exact on {len(rows)} rows: {recall:.3f}; kNN agreement signal there: mean |approx - "
          f"exact| {difference:.4f}; ROC-AUC of the signal vs the planted flips: {roc_auc_score(~flipped, signal):.3f} "
          f"(every row), exact on the sample {roc_auc_score(~flipped[rows], exact_signal):.3f}; speed-up "
          f"{extrapolated / approx_seconds:.0f}x (CPU time {extrapolated_cpu / approx_cpu:.0f}x); peak RSS "
          f"{peak / 1e9:.2f} GB (with the mapped file's pages)")

if __name__ == "__main__":
    app.run(main)
