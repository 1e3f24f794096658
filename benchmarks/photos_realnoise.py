"""Benchmark: configs/photos.py end to end on a CIFAR-10N release, from its JPEGs (fine-tuned features).

    nice python -m benchmarks.photos_realnoise --release=/work/scratch/realnoise/cifar10n_worst_s0 \\
        --out=/tmp/photos_bench --frozen_features=/work/scratch/frozen/effl0_features_cifar10n_worst_s0.npz

On a release made by make_realnoise.py (its truth beside it: <release>.truth.tsv, `key noisy true`), it
1. runs `cleannet-run --config=<photos_config>` with meta/classes_heldout_5.txt as data.heldout_list
   (OUT/<name>/), and at the same time the same config's classifier step (`cleannet-train-classifier`,
   weighting none) on a copy of the release whose labels are the truth (OUT/<name>_truth_release/, image
   symlinks; OUT/<name>_truth/): the bound. A finished pipeline (its DONE records) is not run again.
2. reports the classifiers' test accuracy (none, soft, hard, true labels; the share of the none -> truth gap
   each weighting recovers), and wrong-label detection on the run's features (WORKDIR/features, the fine-tuned
   classifier's) for the project's score (verify/scores.tsv) and the peers of benchmarks/realnoise.py on those
   same features (no detection, cleanlab 5-fold self-confidence and find_label_issues, kNN agreement, the
   neighbour vote and its rule), and the peers on --frozen_features (frozen ImageNet features) beside them.
   Protocol of benchmarks/realnoise.py: the threshold with the lowest error on the verified classes'
   verified_train rows; error / precision / recall / F1 / ROC-AUC on verified_val rows, verified (V) and
   held-out (H) classes apart; and the same threshold over every unverified pool row against the truth file
   ("pool"; verified rows are left out: their verification weighs the weighted fine-tunes).
3. wall time per stage (the DONE records' finish times) and CPU time of each command (resource usage of the
   child process, added over invocations in OUT/<name>.cpu.json).

--report_only reads finished work only (the peers' rows are kept in OUT/<name>.{frozen,finetuned}_rows.json).
Needs the `bench` extra (cleanlab) unless --skip=cleanlab.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import realnoise  # noqa: E402  (its peers, protocol and flags --k, --vote_*, --skip)
from benchmarks.photos_truth import make_truth_copy, read_truth  # noqa: E402
from cleannet_tf import atomic_io  # noqa: E402
from cleannet_tf.pipeline import records  # noqa: E402
from cleannet_tf.pipeline.scores_tsv import read_scores_tsv  # noqa: E402
from cleannet_tf.training import metrics, pool  # noqa: E402

_PHOTOS_CONFIG = config_flags.DEFINE_config_file("photos_config", "configs/photos.py", "The config benchmarked.")
_RELEASE = flags.DEFINE_string("release", "", "The release (make_realnoise.py); its truth is <release>.truth.tsv.")
_OUT = flags.DEFINE_string("out", "/tmp/photos_bench", "Workdirs, logs, the true-label copy and the .json here.")
_FROZEN = flags.DEFINE_string("frozen_features", "", "Frozen features (.npz) of the release for the peers' rows.")
_HELDOUT = flags.DEFINE_string("heldout_list", "meta/classes_heldout_5.txt", "Held-out list, relative to --release.")
_BOUND = flags.DEFINE_bool("bound", True, "Also fine-tune on the true labels (the bound).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Run nothing; report what is finished.")
_RUN_ARGS = flags.DEFINE_list("run_args", [], "More --config.x=y arguments of both commands.")

STAGES = ("train_classifier", "extract", "refs", "train", "verify", "train_classifier_soft", "train_classifier_hard",
          "export")
WEIGHTINGS = ("none", "soft", "hard")


# --------------------------------------------------------------------------- metrics (pure numpy)


def gap_recovered(noisy: float, weighted: float, true: float) -> float:
    """Share of the accuracy gap between the noisy-label and the true-label classifier a weighting closes."""
    return (weighted - noisy) / (true - noisy) if true != noisy else float("nan")


def pool_metrics(scores: np.ndarray, correct: np.ndarray, threshold: float, held: np.ndarray) -> dict:
    """Detection of pool rows against the truth: scores (P,) high = label right, correct (P,) 0/1 (noisy
    label == true label), held (P,) bool (row of a held-out class) -> {"<metric> pool V|H|all": value}."""
    out = {}
    for tag, mask in (("V", ~held), ("H", held), ("all", np.ones_like(held))):
        if mask.any():
            m = metrics.detection_metrics(scores[mask], correct[mask], threshold)
            out.update({f"{name} pool {tag}": m[name] for name in realnoise.METRICS})
    return out


def evaluate(data: pool.TrainingData, correct: np.ndarray, scores: np.ndarray | None = None, *,
             flagged: np.ndarray | None = None) -> dict:
    """realnoise.evaluate (verified_val rows, V / H) and pool_metrics of the unverified rows at the same threshold."""
    out = realnoise.evaluate(data, scores, flagged=flagged)
    scores, threshold = realnoise.decision(data, scores, flagged)
    unverified = data.verification < 0  # a verified row's label may have steered training (its weight)
    out.update(pool_metrics(scores[unverified], correct[unverified], threshold,
                            data.heldout_classes[data.labels][unverified]))
    if flagged is not None:
        out = {k: v for k, v in out.items() if not k.startswith("roc_auc")}
    return out


def stage_seconds(finished: dict[str, float], start: float | None) -> dict[str, float]:
    """Wall seconds per stage from the DONE records' finish times (epoch seconds), in STAGES order: each stage
    from the previous one's finish (the first from `start`, when known)."""
    out, previous = {}, start
    for stage in STAGES:
        if stage in finished:
            if previous is not None:
                out[stage] = finished[stage] - previous
            previous = finished[stage]
    return out


# --------------------------------------------------------------------------- running


def _command(tool: str, root: str, workdir: str) -> list[str]:
    config_file = config_flags.get_config_filename(flags.FLAGS["photos_config"])
    return [tool, f"--config={config_file}", f"--config.data.root={root}",
            f"--config.data.heldout_list={os.path.join(root, _HELDOUT.value)}", f"--workdir={workdir}",
            *_RUN_ARGS.value]


def _done(workdir: str, record: str) -> bool:
    return records.read_record(workdir, record) is not None


def run_commands(jobs: dict[str, list[str]], out: str) -> None:
    """Runs the commands at once under nice (logs OUT/<name>.log); adds each one's wall and CPU seconds
    (os.wait4's resource usage of the child) to OUT/<name>.cpu.json."""
    running = {}
    for name, command in jobs.items():
        log = open(os.path.join(out, f"{name}.log"), "a")
        print(f"{name}: {' '.join(command)}  (log {log.name})", flush=True)
        process = subprocess.Popen(["nice", *command], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": os.getcwd()})
        running[process.pid] = (name, time.time(), log)
    while running:
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, started, log = running.pop(pid)
        log.close()
        path = os.path.join(out, f"{name}.cpu.json")
        prior = json.load(open(path)) if os.path.exists(path) else {"wall": 0.0, "cpu": 0.0, "started": started}
        atomic_io.write_json(path, {"wall": prior["wall"] + time.time() - started,
                                    "cpu": prior["cpu"] + usage.ru_utime + usage.ru_stime, "started": prior["started"]})
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{name} failed (exit {os.waitstatus_to_exitcode(status)}): see {log.name}")


# --------------------------------------------------------------------------- reporting


def _load_data(config, root: str, workdir: str, features: str):
    """(TrainingData, table) of the release on `features` (.npz) or, when empty, on WORKDIR/features."""
    from cleannet_tf.pipeline.artifacts import open_features
    from cleannet_tf.pipeline.table import load_table

    config = copy.deepcopy(config)
    config.data.root, config.data.features = root, features
    config.data.heldout_list = os.path.join(root, _HELDOUT.value)
    config.data.merge_review = False
    table = load_table(config, workdir)
    source = open_features(config, workdir, table)
    data = pool.prepare_training_data(table, source, table.class_names, source.feature_dim,
                                      np.ones(table.num_classes))
    return data, table


def _correct(data: pool.TrainingData, table, truth: dict[str, tuple[str, str]]) -> np.ndarray:
    """(P,) 1 where the pool row's noisy label is its true label."""
    names = np.asarray(data.class_names)
    by_stem = {k.rsplit(".", 1)[0]: true for k, (_, true) in truth.items()}
    keys = [str(k).rsplit(".", 1)[0] if str(k).endswith(".jpg") else str(k) for k in table.keys[data.table_rows]]
    return np.array([by_stem[k] == names[label] for k, label in zip(keys, data.labels, strict=True)], np.int8)


def peer_rows(data: pool.TrainingData, correct: np.ndarray, features: str, seed: int) -> list[dict]:
    """benchmarks/realnoise.py's peers on `data`'s features, each row evaluated by `evaluate`."""
    from benchmarks.transfer_variants import cleanlab_probabilities
    from cleannet_tf.detection import signals as detection_signals

    rows = []

    def add(method, scores=None, seconds=0.0, flagged=None):
        rows.append({"features": features, "method": method, "seconds": seconds,
                     **evaluate(data, correct, scores, flagged=flagged)})

    add("no detection", flagged=np.zeros(len(data.labels), bool))
    if "cleanlab" not in realnoise._SKIP.value:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        start = time.perf_counter()
        probabilities = cleanlab_probabilities(data, seed)
        seconds = time.perf_counter() - start
        add("cleanlab self-confidence (5-fold)", get_label_quality_scores(data.labels, probabilities), seconds)
        add("cleanlab find_label_issues", flagged=find_label_issues(data.labels, probabilities), seconds=seconds)
    start = time.perf_counter()
    x = detection_signals.log_normalize(data.features)
    add(f"kNN agreement k={realnoise._K.value}", detection_signals.knn_label_agreement(x, data.labels,
                                                                                      k=realnoise._K.value),
        time.perf_counter() - start)
    if "vote" not in realnoise._SKIP.value:
        start = time.perf_counter()
        score, flagged = realnoise.neighbour_vote(data.features, data.labels, len(data.class_names),
                                                  k=realnoise._K.value, rounds=realnoise._VOTE_ROUNDS.value,
                                                  dim=realnoise._VOTE_DIM.value, seed=seed)
        seconds = time.perf_counter() - start
        add("neighbour vote share", score, seconds)
        add("neighbour vote rule", flagged=flagged, seconds=seconds)
    return rows


def cached_rows(path: str, compute) -> list[dict]:
    """The rows saved at `path` (the same features give the same rows), else compute() saved there."""
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    rows = compute()
    atomic_io.write_json(path, rows)
    return rows


def default_row(data: pool.TrainingData, table, correct: np.ndarray, workdir: str) -> dict:
    """The project's score (verify/scores.tsv rank_score) under the same protocol, and its own metrics.json."""
    scores = read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    by_key = dict(zip(scores.keys, scores.rank_score, strict=True))
    rank = np.array([by_key[k] for k in table.keys[data.table_rows]], np.float64)
    with open(os.path.join(workdir, "verify", "metrics.json")) as f:
        own = json.load(f)
    return {"features": "fine-tuned", "method": "configs/photos.py (verify/scores.tsv)", "seconds": 0.0,
            **evaluate(data, correct, rank), "own metrics.json": own}


def accuracies(workdir: str, truth_workdir: str) -> dict:
    out = {}
    for weighting in WEIGHTINGS:
        path = os.path.join(workdir, "classifier" if weighting == "none" else f"classifier_{weighting}",
                            "metrics.json")
        if os.path.exists(path):
            out[weighting] = json.load(open(path))["test_accuracy"]
    path = os.path.join(truth_workdir, "classifier", "metrics.json")
    if os.path.exists(path):
        out["true"] = json.load(open(path))["test_accuracy"]
    for weighting in WEIGHTINGS[1:]:
        if {"none", "true", weighting} <= set(out):
            out[f"gap recovered {weighting}"] = gap_recovered(out["none"], out[weighting], out["true"])
    return out


def timings(workdir: str, out: str, name: str) -> dict:
    finished = {}
    for stage in STAGES:
        record = records.read_record(workdir, stage)
        if record:
            finished[stage] = time.mktime(time.strptime(record["finished"], "%Y-%m-%d %H:%M:%S"))
    cpu = {}
    for part in (name, f"{name}_truth"):
        path = os.path.join(out, f"{part}.cpu.json")
        if os.path.exists(path):
            cpu[part] = json.load(open(path))
    start = cpu.get(name, {}).get("started")
    return {"wall per stage": stage_seconds(finished, start), "commands": cpu}


def print_report(report: dict) -> None:
    print(f"\n== {report['release']}")
    print("test accuracy:", json.dumps(report["accuracy"]))
    print("timings:", json.dumps(report["timings"]))
    cols = [f"{m} {t}" for m in ("error", "f1", "roc_auc") for t in ("V", "H")] + [
        "error pool all", "f1 pool all", "roc_auc pool all"]
    print("| features | method | " + " | ".join(cols) + " |")
    for row in report["rows"]:
        cells = [f"{row[c]:.3f}" if c in row and np.isfinite(row[c]) else "-" for c in cols]
        print(f"| {row['features']} | {row['method']} | " + " | ".join(cells) + " |")


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if not _RELEASE.value:
        raise SystemExit("--release is required (a release made by make_realnoise.py).")
    release = os.path.normpath(_RELEASE.value)
    name = os.path.basename(release)
    out = os.path.abspath(_OUT.value)
    os.makedirs(out, exist_ok=True)
    workdir, truth_workdir = os.path.join(out, name), os.path.join(out, f"{name}_truth")
    truth_tsv = f"{release}.truth.tsv"
    truth = read_truth(truth_tsv)
    if not _REPORT_ONLY.value:
        jobs = {}
        if not _done(workdir, "export"):
            jobs[name] = _command("cleannet-run", release, workdir)
        if _BOUND.value and not _done(truth_workdir, "train_classifier"):
            copy_root = make_truth_copy(release, truth_tsv, os.path.join(out, f"{name}_truth_release"))
            jobs[f"{name}_truth"] = _command("cleannet-train-classifier", copy_root, truth_workdir)
        run_commands(jobs, out)
    config = _PHOTOS_CONFIG.value
    rows = []
    if _FROZEN.value:
        def frozen_rows():
            frozen, frozen_table = _load_data(config, release, workdir, _FROZEN.value)
            return peer_rows(frozen, _correct(frozen, frozen_table, truth), "frozen", config.seed)
        rows += cached_rows(os.path.join(out, f"{name}.frozen_rows.json"), frozen_rows)
    if _done(workdir, "verify"):
        data, table = _load_data(config, release, workdir, "")
        correct = _correct(data, table, truth)
        rows = [default_row(data, table, correct, workdir)] + cached_rows(
            os.path.join(out, f"{name}.finetuned_rows.json"),
            lambda: peer_rows(data, correct, "fine-tuned", config.seed)) + rows
    else:
        print(f"{workdir}: verify not finished; no detection rows of the fine-tuned features yet.")
    report = {"release": name, "accuracy": accuracies(workdir, truth_workdir),
              "timings": timings(workdir, out, name), "rows": rows}
    atomic_io.write_json(os.path.join(out, f"{name}.report.json"), report)
    print_report(report)


if __name__ == "__main__":
    sys.exit(app.run(main))
