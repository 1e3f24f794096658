"""Benchmark: IVF-Flat against HNSW (neighbours.ApproximateIndex) on real features, recall@10 against exact search.

Reads `--features` (an .npz with a `features` (N, D) array, e.g. EfficientNet-Lite0 features of real photos; never
commit such data), log-normalises it (the kNN signal's rows) and, with `--rows` above N, tiles it into that many
rows on disk (copy c of the features multiplied elementwise by exp(0.3 z), z ~ N(0, 1) seeded by c: real-looking
rows at 10^6 for timing). Builds each index once, then for each probe setting searches `--queries` sampled rows
(31 candidates re-ranked exactly) and prints recall@10 against exact search of `--exact_queries` of them, CPU ms
per query and build CPU ms per row, and the search of all rows extrapolated.

    python -m benchmarks.neighbours_real --features=/path/effl0_features.npz            # 25k rows, as they are
    python -m benchmarks.neighbours_real --features=... --rows=1000000 --queries=10000 --scratch=/work/scratch/x
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags

from cleannet_tf import ops
from cleannet_tf.features import neighbours

_FEATURES = flags.DEFINE_string("features", None, "An .npz with a `features` (N, D) array.", required=True)
_ROWS = flags.DEFINE_integer("rows", 0, "Rows (0: the file's; more: tiled, perturbed copies on disk).")
_QUERIES = flags.DEFINE_integer("queries", 1000, "Rows searched in the index.")
_EXACT = flags.DEFINE_integer("exact_queries", 1000, "Of those, rows searched exactly (recall@10).")
_NPROBE = flags.DEFINE_list("nprobe", ["16", "32", "64"], "IVF-Flat lists probed.")
_EF_SEARCH = flags.DEFINE_list("ef_search", ["32", "64", "128"], "HNSW ef_search values.")
_HNSW_M = flags.DEFINE_integer("hnsw_m", 16, "HNSW links per row.")
_KEEP = flags.DEFINE_bool("keep", False, "Keep the tiled rows for a later run.")
_SCRATCH = flags.DEFINE_string("scratch", "", "Folder of the tiled rows (default: the system temp folder).")


def load_rows(path: str, rows: int, scratch: str):
    """Log-normalised rows: the file's (in memory), or `rows` tiled perturbed copies (a memory-mapped .npy)."""
    with np.load(path) as npz:
        real = np.asarray(npz["features"], np.float32)
    if rows <= len(real):
        return ops.log_normalize(real), None
    tiled = os.path.join(scratch or tempfile.gettempdir(), f"neighbours_real_{rows}.npy")
    if os.path.exists(tiled):  # kept by an earlier run (--keep)
        return np.load(tiled, mmap_mode="r"), tiled
    x = np.lib.format.open_memmap(tiled + ".partial.npy", "w+", np.float32, (rows, real.shape[1]))
    for copy, start in enumerate(range(0, rows, len(real))):
        block = real[:min(len(real), rows - start)]
        noise = np.exp(0.3 * np.random.default_rng(copy).standard_normal(block.shape, np.float32))
        x[start:start + len(block)] = ops.log_normalize(block * noise)
    x.flush()
    del x
    os.replace(tiled + ".partial.npy", tiled)
    return np.load(tiled, mmap_mode="r"), tiled


def main(argv):
    del argv
    x, tiled = load_rows(_FEATURES.value, _ROWS.value, _SCRATCH.value)
    try:
        n, k = len(x), 10
        rng = np.random.default_rng(0)
        queries = np.sort(rng.choice(n, min(n, _QUERIES.value), replace=False))
        exact_rows = np.sort(rng.choice(len(queries), min(len(queries), _EXACT.value), replace=False))
        cpu = time.process_time()
        truth, _ = neighbours.exact_search(x, k, queries=queries[exact_rows])
        exact_ms = 1e3 * (time.process_time() - cpu) / len(exact_rows)
        print(f"{n} x {x.shape[1]} rows; exact search: {exact_ms:.2f} CPU ms / query, all rows "
              f"~{exact_ms * n / 1e3:.0f} CPU s", flush=True)
        print("| index | recall@10 | search, CPU ms / query | build, CPU ms / row | all rows, CPU s |")
        print("|---|---|---|---|---|")
        for kind, settings in (("ivf", _NPROBE.value), ("hnsw", _EF_SEARCH.value)):
            if not settings:
                continue
            cpu = time.process_time()
            index = neighbours.ApproximateIndex(x, index=kind, hnsw_m=_HNSW_M.value)
            build = time.process_time() - cpu
            for setting in map(int, settings):
                if kind == "ivf":
                    index.index.nprobe = setting
                else:
                    index.index.hnsw.efSearch = setting
                cpu = time.process_time()
                found, _ = index.search(k, queries=queries)
                search = time.process_time() - cpu
                recall = np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(truth, found[exact_rows],
                                                                                strict=True)])
                name = (f"IVF-Flat, {index.index.nlist} lists, {setting} probed" if kind == "ivf"
                        else f"HNSW, M={_HNSW_M.value}, ef_search {setting}")
                print(f"| {name} | {recall:.3f} | {1e3 * search / len(queries):.3f} | {1e3 * build / n:.3f} | "
                      f"{build + search * n / len(queries):.0f} |", flush=True)
            del index
    finally:
        del x
        if tiled and not _KEEP.value:
            os.remove(tiled)


if __name__ == "__main__":
    app.run(main)
