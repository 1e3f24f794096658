"""Benchmark: refs, a short CleanNet train, verify (scores.tsv and the report) and the kNN signal at 10^5-10^6 rows.

For each scale, writes synthetic pool5-like features with planted label noise (ReLU of a random projection of a
per-class Gaussian mixture, each class made of a few sub-clusters; `noise` of the labels moved to another class)
into a real workdir: a TSV release (data.format=tsv, no images: data.check_images=False) and the sharded feature
store cleannet-extract would write (WORKDIR/features/, features/store.py). Then runs each step in its own process,
through the project's step functions (pipeline.refs.run_refs, pipeline.train.run_train, pipeline.verify.run_verify),
and prints for each its wall time, CPU seconds and peak RSS (the child's ru_maxrss from wait4: the kernel's
high-water mark of resident memory, file pages the step maps included), next to the features' size in RAM.

    food101n     310,000 x 2048, 101 classes, 20% wrong labels
    clothing1m 1,000,000 x 2048, 14 classes, 38% wrong labels

The kNN step is the knn_agreement signal (detection/signals.py knn_label_agreement through features/neighbours.py,
approximate above neighbours.EXACT_MAX_ROWS) on every row of the log-normalised features (a .npy on disk, read
block by block). Its search runs for `--knn_queries` sampled rows (0: all) and is extrapolated to N; exact search
(the O(N^2) baseline) runs in the same process for `--knn_exact_queries` of those rows: recall@10 and its time
extrapolated to N. The planted flips give the signal's ROC-AUC.

    python -m benchmarks.scale --workdir=/work/scratch/scale                     # both scales (17 GB of disk)
    python -m benchmarks.scale --scales=food101n --rows=20000 --train_steps=50   # quick look
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

SCALES = {"food101n": (310_000, 101, 0.20), "clothing1m": (1_000_000, 14, 0.38)}  # rows, classes, noise
STEPS = ("refs", "train", "verify", "knn")

_SCALES = flags.DEFINE_list("scales", ["food101n", "clothing1m"], f"Scales to run, of {sorted(SCALES)}.")
_ROWS = flags.DEFINE_integer("rows", 0, "Rows of every scale (0: the scale's own).")
_DIM = flags.DEFINE_integer("dim", 2048, "Feature dimension.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cleannet_scale", "Base folder: one workdir per scale.")
_STEPS = flags.DEFINE_list("steps", list(STEPS), f"Steps to run, of {STEPS}.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 300, "CleanNet training steps (train.steps).")
_N_INIT = flags.DEFINE_integer("n_init", 10, "refs.n_init (k-means restarts).")
_REFS_SAMPLES = flags.DEFINE_integer("refs_samples", 50_000, "refs.max_samples_per_class.")
_THREADS = flags.DEFINE_integer("threads", 0, "OMP / OpenBLAS threads of each step (0: their default).")
_KNN_QUERIES = flags.DEFINE_integer("knn_queries", 50_000, "Rows searched in the approximate index (0: all).")
_KNN_EXACT = flags.DEFINE_integer("knn_exact_queries", 1000, "Rows searched exactly (baseline, recall@10).")
_INDEX = flags.DEFINE_enum("knn_index", "hnsw", ["ivf", "hnsw"], "neighbours index: IVF-Flat or HNSW.")
_NPROBE = flags.DEFINE_integer("nprobe", 64, "neighbours nprobe (ivf).")
_EF_SEARCH = flags.DEFINE_integer("ef_search", 64, "neighbours ef_search (hnsw): the effort the tuning starts at.")
_EF_CONSTRUCTION = flags.DEFINE_integer("ef_construction", 0, "neighbours ef_construction (hnsw; 0: its default).")
_TARGET_RECALL = flags.DEFINE_float("target_recall", 0.95, "ApproximateIndex.tune's target (nearest_neighbours' "
                                    "default; 0: search at --ef_search / --nprobe as given).")
_SEED = flags.DEFINE_integer("seed", 0, "Data seed.")
_STEP = flags.DEFINE_string("step", "", "Internal: run one step of the workdir --workdir in this process.")

VERIFIED_TRAIN, VERIFIED_VAL = 0.03, 0.01  # shares of the rows with a verification label (train / val split)
SUB_CLUSTERS = 4
SHARD_ROWS = 8192


def write_workdir(workdir: str, n: int, num_classes: int, noise: float, dim: int, seed: int) -> dict:
    """Writes WORKDIR/data.tsv and the feature store WORKDIR/features/ (kept once written); returns the planting."""
    from cleannet_tf.features.store import FeatureStore

    record = os.path.join(workdir, "planted.json")
    if os.path.exists(record):
        with open(record) as f:
            return json.load(f)

    rng = np.random.default_rng(seed)
    latent = 128
    centres = rng.standard_normal((num_classes * SUB_CLUSTERS, latent)).astype(np.float32) * 1.5
    projection = (rng.standard_normal((latent, dim)) / np.sqrt(latent)).astype(np.float32)
    true = rng.integers(num_classes, size=n)
    flipped = rng.random(n) < noise
    labels = np.where(flipped, (true + rng.integers(1, num_classes, size=n)) % num_classes, true)
    draw = rng.random(n)
    split = np.where(draw < VERIFIED_VAL, "val", "train")
    verified = np.where(draw < VERIFIED_VAL + VERIFIED_TRAIN, np.where(flipped, "0", "1"), "")
    class_names = np.array([f"class_{c:03d}" for c in range(num_classes)])
    keys = np.array([f"{class_names[labels[i]]}/{i:07d}.jpg" for i in range(n)])
    tsv = os.path.join(workdir, "data.tsv")
    with open(tsv + ".tmp", "w") as f:
        f.write("path\tlabel\tverified\tsplit\n")
        f.writelines(f"{k}\t{class_names[c]}\t{v}\t{s}\n" for k, c, v, s in zip(keys, labels, verified, split,
                                                                                  strict=True))
    os.replace(tsv + ".tmp", tsv)
    from cleannet_tf.data.tsv import read_tsv

    table = read_tsv(tsv, check_images=False)  # the store's keys and paths in the table's order
    store = FeatureStore.create_or_open(os.path.join(workdir, "features"), keys=table.keys, paths=table.paths,
                                        feature_dim=dim, shard_size=SHARD_ROWS, extractor={"synthetic": seed})
    order = {k: i for i, k in enumerate(keys)}
    rows = np.array([order[k] for k in table.keys])
    for shard in store.unfinished_shards():
        start, end = store.shard_rows(shard)
        r = rows[start:end]
        block_rng = np.random.default_rng([seed, shard])
        cluster = true[r] * SUB_CLUSTERS + block_rng.integers(SUB_CLUSTERS, size=len(r))
        z = centres[cluster] + block_rng.standard_normal((len(r), latent)).astype(np.float32)
        store.write_shard(shard, np.maximum(z @ projection, 0.0), np.ones(len(r), bool))
    store.finalize()
    np.save(os.path.join(workdir, "flipped.npy"), flipped[rows])
    planted = {"rows": n, "classes": num_classes, "noise": float(flipped.mean()),
               "verified": int((verified != "").sum())}
    with open(record + ".tmp", "w") as f:
        json.dump(planted, f)
    os.replace(record + ".tmp", record)
    return planted


def step_config(workdir: str):
    from cleannet_tf import config as config_lib

    config = config_lib.default_config()
    config.data.format, config.data.root, config.data.check_images = "tsv", os.path.join(workdir, "data.tsv"), False
    config.refs.n_init = _N_INIT.value
    config.refs.max_samples_per_class = _REFS_SAMPLES.value
    config.cleannet.mode = "stacked"
    config.train.steps = _TRAIN_STEPS.value
    config.train.lr_decay_steps = max(1, _TRAIN_STEPS.value // 2)
    config.train.eval_every = config.train.checkpoint_every = _TRAIN_STEPS.value
    config.train.log_every = max(1, _TRAIN_STEPS.value // 3)
    return config_lib.validate(config)


def run_knn(workdir: str) -> str:
    """The knn_agreement signal of every row (approximate; sampled queries extrapolated) and the exact baseline."""
    from sklearn.metrics import roc_auc_score

    from cleannet_tf import ops
    from cleannet_tf.features import neighbours
    from cleannet_tf.features.store import FeatureStore
    from cleannet_tf.pipeline.table import load_table

    table = load_table(step_config(workdir), workdir)
    store = FeatureStore(os.path.join(workdir, "features"))
    path = os.path.join(workdir, "knn_x.npy")
    x = np.lib.format.open_memmap(path + ".tmp.npy", "w+", np.float32, (store.num_rows, store.feature_dim))
    for shard in range(store.num_shards):  # the log-normalised rows on disk, one shard in memory
        start, end = store.shard_rows(shard)
        x[start:end] = ops.log_normalize(store.shard_features(shard))
    x.flush()
    del x
    os.replace(path + ".tmp.npy", path)
    x = np.load(path, mmap_mode="r")
    n, k = len(x), 10
    rng = np.random.default_rng(0)
    queries = np.sort(rng.choice(n, min(n, _KNN_QUERIES.value or n), replace=False))
    cpu, wall = time.process_time(), time.perf_counter()
    index = neighbours.ApproximateIndex(x, index=_INDEX.value, nprobe=_NPROBE.value, ef_search=_EF_SEARCH.value,
                                        ef_construction=_EF_CONSTRUCTION.value)
    build_cpu, build_wall = time.process_time() - cpu, time.perf_counter() - wall
    cpu, wall = time.process_time(), time.perf_counter()
    if _TARGET_RECALL.value > 0:
        index.tune(k, target_recall=_TARGET_RECALL.value)
    tune_cpu, tune_wall = time.process_time() - cpu, time.perf_counter() - wall
    cpu, wall = time.process_time(), time.perf_counter()
    found, _ = index.search(k, queries=queries)
    search_cpu, search_wall = time.process_time() - cpu, time.perf_counter() - wall
    exact_rows = np.sort(rng.choice(len(queries), min(len(queries), _KNN_EXACT.value), replace=False))
    cpu, wall = time.process_time(), time.perf_counter()
    truth, _ = neighbours.exact_search(x, k, queries=queries[exact_rows])
    exact_cpu, exact_wall = time.process_time() - cpu, time.perf_counter() - wall
    recall = float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(truth, found[exact_rows], strict=True)]))
    agreement = (table.labels[found] == table.labels[queries, None]).mean(axis=1)
    flipped = np.load(os.path.join(workdir, "flipped.npy"))[queries]
    auc = roc_auc_score(flipped, -agreement)
    scale = n / len(queries)
    effort = index.effort
    built = f", efConstruction {index.index.hnsw.efConstruction}" if _INDEX.value == "hnsw" else ""
    del index, x
    os.remove(path)
    start = _NPROBE.value if _INDEX.value == "ivf" else _EF_SEARCH.value
    setting = (f"{'nprobe' if _INDEX.value == 'ivf' else 'ef_search'} {effort}"
               + (f" (tuned from {start} to recall {_TARGET_RECALL.value:g})" if _TARGET_RECALL.value > 0 else "")
               + built)
    build_wall, build_cpu = build_wall + tune_wall, build_cpu + tune_cpu
    return (f"knn: {_INDEX.value} {setting}, {len(queries)} of {n} rows searched: build and tune {build_wall:.0f} s "
            f"({build_cpu:.0f} CPU-s), search {search_wall:.0f} s ({search_cpu:.0f} CPU-s) -> all {n} rows "
            f"~{build_wall + search_wall * scale:.0f} s ({build_cpu + search_cpu * scale:.0f} CPU-s); exact "
            f"{len(exact_rows)} rows {exact_wall:.1f} s -> all rows ~{exact_wall * n / len(exact_rows):.0f} s "
            f"({exact_cpu * n / len(exact_rows):.0f} CPU-s); recall@10 {recall:.3f}; ROC-AUC of the signal "
            f"against the planted flips {auc:.3f}")


def run_step(step: str, workdir: str) -> str:
    """One step in this process; returns a line for the table."""
    if step == "knn":
        return run_knn(workdir)
    config = step_config(workdir)
    if step == "refs":
        from cleannet_tf.pipeline.refs import run_refs

        refs = run_refs(config, workdir, progress=False)
        return f"refs: {refs.references.shape}"
    if step == "train":
        from cleannet_tf.pipeline.train import run_train

        payload = run_train(config, workdir, progress=False)
        return f"train: {config.train.steps} steps, " + ", ".join(
            f"{k} {v:.3f}" for k, v in payload.items() if isinstance(v, float))[:300]
    from cleannet_tf.pipeline.verify import run_verify

    report = run_verify(config, workdir)
    return (f"verify: detection error {report['detection_error']:.3f}, ROC-AUC {report['roc_auc']:.3f}, "
            f"{report['n_flagged']} of {report['n_images']} flagged")


def measure(step: str, workdir: str) -> dict:
    """Runs `step` in a child process: wall s, CPU s (user + system, all threads) and peak RSS from wait4."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", f"--step={step}", f"--workdir={workdir}",
                              f"--train_steps={_TRAIN_STEPS.value}", f"--n_init={_N_INIT.value}",
                              f"--refs_samples={_REFS_SAMPLES.value}",
                              f"--knn_queries={_KNN_QUERIES.value}", f"--knn_exact_queries={_KNN_EXACT.value}",
                              f"--knn_index={_INDEX.value}", f"--nprobe={_NPROBE.value}",
                              f"--ef_search={_EF_SEARCH.value}", f"--target_recall={_TARGET_RECALL.value}",
                              f"--ef_construction={_EF_CONSTRUCTION.value}"],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **({name: str(_THREADS.value) for name in (
                                 "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
                                 if _THREADS.value else {})})
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise RuntimeError(f"step {step} failed with status {child.returncode}")
    result = [line for line in output.splitlines() if line.startswith("RESULT ")]
    return {"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
            "peak": usage.ru_maxrss * 1024, "result": result[-1][7:] if result else ""}


def main(argv):
    del argv
    if _STEP.value:
        print("RESULT " + run_step(_STEP.value, _WORKDIR.value), flush=True)
        return
    for name in _SCALES.value:
        n, num_classes, noise = SCALES[name]
        n = _ROWS.value or n
        workdir = os.path.join(_WORKDIR.value, f"{name}_{n}")
        os.makedirs(workdir, exist_ok=True)
        start = time.perf_counter()
        planted = write_workdir(workdir, n, num_classes, noise, _DIM.value, _SEED.value)
        features_gb = n * _DIM.value * 4 / 1e9
        print(f"\n{name}: {n} x {_DIM.value} float32 features = {features_gb:.2f} GB in RAM, {num_classes} "
              f"classes, {planted['noise']:.1%} wrong labels, {planted['verified']} verified; data written in "
              f"{time.perf_counter() - start:.0f} s to {workdir}", flush=True)
        print(f"{'step':8s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS GB':>12s} {'/ features':>11s}", flush=True)
        for step in _STEPS.value:
            figures = measure(step, workdir)
            print(f"{step:8s} {figures['wall']:8.0f} {figures['cpu']:8.0f} {figures['peak'] / 1e9:12.2f} "
                  f"{figures['peak'] / 1e9 / features_gb:11.2f}   {figures['result']}", flush=True)


if __name__ == "__main__":
    app.run(main)
