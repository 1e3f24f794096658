"""Benchmark: `build_reference_sets` (float32 k-means) on synthetic pool5-like features in a memory-mapped .npy on
disk, against scikit-learn's KMeans (`kmeans_backend="sklearn"`) measured in the same run.

Writes N x D float32 features (non-negative, clustered per class, 20% label noise by default) to a temporary .npy
with plain file writes, then builds the reference sets through a gather callable that reads it through memory maps
of `--shard_rows`-row windows, mapped and unmapped on every call (as `FeatureStore.gather` does with its shards).
Prints wall time, images/s and the peak RSS of the process (ru_maxrss, plus the sampled peak of anonymous memory),
next to the size the features would take in RAM, to show that memory is bounded by one class, not by N.

The scikit-learn baseline runs on the first `--baseline_classes` classes only (it takes ~4 s a class on an idle
machine) and its time is scaled to all classes; the inertia ratio (sum over those classes of the float32 result's
inertia / scikit-learn's, both computed here in float64 on the same rows) compares the two on the same data.
CPU-seconds (getrusage, all threads) are printed besides wall time: the machine may be shared.

    python benchmarks/kmeans.py                        # 100k x 2048, 101 classes, K=32, n_init=10, max_iter=50
    python benchmarks/kmeans.py --baseline_classes=101 # scikit-learn on every class (slow)
    python benchmarks/kmeans.py --classes=1            # one huge class (sampled down to --max_samples)
    python benchmarks/kmeans.py --n=20000 --n_init=1   # quick look
"""

from __future__ import annotations

import os
import resource
import tempfile
import threading
import time

import numpy as np
from absl import app, flags

from cleannet_tf.features.references import build_reference_sets  # noqa: E402

CHUNK_ROWS = 4096


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmHWM, VmRSS, RssAnon, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def inertia_float64(x: np.ndarray, centres: np.ndarray) -> float:
    """Sum over rows of the squared distance to the nearest centre, in float64, 4096 rows at a time."""
    centres = centres.astype(np.float64)
    centres_sq = (centres**2).sum(axis=1)
    total = 0.0
    for start in range(0, len(x), CHUNK_ROWS):
        chunk = x[start:start + CHUNK_ROWS].astype(np.float64)
        d = (chunk**2).sum(axis=1)[:, None] - 2 * chunk @ centres.T + centres_sq[None, :]
        total += float(np.maximum(d.min(axis=1), 0).sum())
    return total


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_synthetic(path: str, n: int, d: int, classes: int, modes: int, noise: float, seed: int) -> np.ndarray:
    """Writes (n, d) float32 features to the .npy `path` chunk by chunk; returns the (n,) noisy labels.

    Each class is a mixture of `modes` modes; a feature is ReLU(class base + mode offset + Gaussian noise), so
    roughly 40% of the entries are zero like ResNet pool5 features. A `noise` fraction of each class's rows is
    drawn from another class (label noise).
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(-0.2, 0.6, size=(classes, d)).astype(np.float32)
    offsets = rng.normal(0.0, 0.3, size=(classes, modes, d)).astype(np.float32)
    labels = rng.integers(0, classes, size=n)
    true_class = np.where(rng.random(n) < noise, rng.integers(0, classes, size=n), labels)
    mode = rng.integers(0, modes, size=n)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False, "shape": (n, d)}
    with open(path, "wb") as f:  # plain writes, not a memory map: the writer's RSS stays small
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, n, CHUNK_ROWS):
            stop = min(n, start + CHUNK_ROWS)
            tc, m = true_class[start:stop], mode[start:stop]
            x = base[tc] + offsets[tc, m] + 0.5 * rng.standard_normal((stop - start, d), dtype=np.float32)
            np.maximum(x, 0.0, out=x)
            f.write(x.tobytes())
    return labels


class ShardedGather:
    """gather_features over the .npy at `path`, read through one memory map per window of `shard_rows` rows.

    Like `FeatureStore.gather` (one mapped file per shard): each window is mapped, read and unmapped, so the
    mapped (file-backed, reclaimable) pages counted in RSS stay bounded by one window.
    """

    def __init__(self, path: str, shard_rows: int):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            self.offset = f.tell()
        self.path, self.shard_rows, self.dtype = path, shard_rows, dtype
        self.num_rows, self.dim = shape
        self.calls: list[int] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(len(rows))
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        shard_of_row = rows // self.shard_rows
        for shard in np.unique(shard_of_row):
            where = np.flatnonzero(shard_of_row == shard)
            start = int(shard) * self.shard_rows
            stop = min(self.num_rows, start + self.shard_rows)
            window = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(stop - start, self.dim),
                               offset=self.offset + start * self.dim * self.dtype.itemsize)
            out[where] = window[rows[where] - start]
            del window
        return out


class AnonRssSampler(threading.Thread):
    """Samples RssAnon (the process's own heap, without mapped file pages) every `interval` seconds."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, 0, threading.Event()

    @staticmethod
    def read() -> int:
        return status_bytes("RssAnon")

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.read())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, self.read())


FLAGS = flags.FLAGS
flags.DEFINE_integer("n", 100_000, "images")
flags.DEFINE_integer("d", 2048, "feature dimension")
flags.DEFINE_integer("classes", 101, "classes (1: a single huge class)")
flags.DEFINE_integer("k", 32, "references per class")
flags.DEFINE_integer("n_init", 10, "k-means restarts")
flags.DEFINE_integer("max_iter", 50, "max_iter")
flags.DEFINE_float("tol", 1e-4, "tol")
flags.DEFINE_integer("max_samples", 50_000, "max_samples_per_class (0: no cap)")
flags.DEFINE_integer("modes", 8, "synthetic modes per class")
flags.DEFINE_float("label_noise", 0.2, "fraction of rows drawn from another class")
flags.DEFINE_integer("threads", 0, "limit BLAS/OpenMP threads (0: library default)")
flags.DEFINE_string("tmpdir", None, "where to write the temporary .npy (default: system temp)")
flags.DEFINE_integer("shard_rows", 10_000, "rows per memory-mapped window (a 'shard')")
flags.DEFINE_integer("seed", 0, "seed")
flags.DEFINE_integer("baseline_classes", 10,
                     "classes the scikit-learn baseline runs on (its time is scaled to all); 0: no baseline")


def main(argv) -> None:
    del argv  # flags only
    args = FLAGS

    with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="kmeans-bench-") as tmp:
        path = os.path.join(tmp, "features.npy")
        t0 = time.perf_counter()
        labels = write_synthetic(path, args.n, args.d, args.classes, args.modes, args.label_noise, args.seed)
        print(f"wrote {args.n} x {args.d} float32 ({os.path.getsize(path) / 2**30:.2f} GiB) to {path} "
              f"in {time.perf_counter() - t0:.1f} s")

        gather = ShardedGather(path, args.shard_rows)
        class_sizes = np.bincount(labels, minlength=args.classes)
        used = np.minimum(class_sizes, args.max_samples) if args.max_samples else class_sizes
        rss_before = current_rss_bytes()
        hwm_reset = reset_peak_rss()
        sampler = AnonRssSampler()
        sampler.start()
        limits = None
        if args.threads:
            from threadpoolctl import threadpool_limits

            limits = threadpool_limits(args.threads)
        load_before = os.getloadavg()[0]
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        refs = build_reference_sets(gather, labels, np.ones(args.n, bool), [f"c{i}" for i in range(args.classes)],
                                    num_references=args.k, n_init=args.n_init, max_iter=args.max_iter, tol=args.tol,
                                    max_samples_per_class=args.max_samples, seed=args.seed, progress=False)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        peak_anon = sampler.stop()
        peak = status_bytes("VmHWM") if hwm_reset else peak_rss_bytes()
        gathers = len(gather.calls)

        baseline = None
        m = min(args.baseline_classes, args.classes)
        if m > 0:
            # The first m classes, relabelled 0..m-1 (so no other class needs rows), through scikit-learn.
            chosen = labels < m
            t0, cpu0 = time.perf_counter(), cpu_seconds()
            sk_refs = build_reference_sets(gather, labels, chosen, [f"c{i}" for i in range(m)],
                                           num_references=args.k, n_init=args.n_init, max_iter=args.max_iter,
                                           tol=args.tol, max_samples_per_class=args.max_samples, seed=args.seed,
                                           progress=False, kmeans_backend="sklearn")
            sk_wall, sk_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
            ours_total = theirs_total = 0.0
            worse = 0
            for c in range(m):
                x = gather(np.flatnonzero(labels == c))
                ours, theirs = inertia_float64(x, refs.references[c]), inertia_float64(x, sk_refs.references[c])
                ours_total, theirs_total, worse = ours_total + ours, theirs_total + theirs, worse + (ours > theirs)
            baseline = (m, sk_wall, sk_cpu, ours_total / theirs_total, worse)
        load_after = os.getloadavg()[0]
        if limits is not None:
            limits.unregister()

    in_ram = args.n * args.d * 4
    biggest = int(used.max()) * args.d * 4
    gib = 2**30
    print(f"settings: N={args.n} D={args.d} C={args.classes} K={args.k} n_init={args.n_init} "
          f"max_iter={args.max_iter} tol={args.tol} max_samples_per_class={args.max_samples} "
          f"threads={args.threads or 'default'} cpus={os.cpu_count()}")
    print(f"classes: {gathers} gathers, rows per class min/median/max "
          f"{int(used.min())}/{int(np.median(used))}/{int(used.max())}, "
          f"{int(used.sum())} images clustered, counts<K: {int((refs.counts < args.k).sum())}")
    print(f"load average (1 min) before/after: {load_before:.1f}/{load_after:.1f} on {os.cpu_count()} CPUs")
    print(f"float32 k-means, all {args.classes} classes: wall time {wall:.1f} s ({int(used.sum()) / wall:.0f} "
          f"images/s, {wall / args.classes:.2f} s/class), CPU {cpu:.1f} s")
    if baseline is not None:
        m, sk_wall, sk_cpu, ratio, worse = baseline
        scale = args.classes / m
        print(f"scikit-learn KMeans, first {m} classes: wall {sk_wall:.1f} s, CPU {sk_cpu:.1f} s; scaled to "
              f"{args.classes} classes: wall {sk_wall * scale:.0f} s, CPU {sk_cpu * scale:.0f} s")
        print(f"speed-up over scikit-learn (same classes, scaled): wall {sk_wall * scale / wall:.1f}x, "
              f"CPU {sk_cpu * scale / cpu:.1f}x")
        print(f"inertia float32 / scikit-learn over those {m} classes (float64 on the same rows): {ratio:.5f}; "
              f"float32 higher on {worse} of {m} classes")
    print(f"RSS before building {rss_before / gib:.3f} GiB; peak RSS while building "
          f"({'VmHWM after reset' if hwm_reset else 'ru_maxrss, whole run'}, incl. mapped file pages) "
          f"{peak / gib:.3f} GiB (+{(peak - rss_before) / gib:.3f}); "
          f"peak anonymous RSS while building (sampled every 5 ms) {peak_anon / gib:.3f} GiB; "
          f"ru_maxrss of the whole run (incl. writing the file) {peak_rss_bytes() / gib:.3f} GiB")
    print(f"features in RAM would be {in_ram / gib:.3f} GiB; largest class used {biggest / gib:.3f} GiB; "
          f"peak RSS / in-RAM size = {peak / in_ram:.2f}")


if __name__ == "__main__":
    app.run(main)
