"""Benchmark: label-noise detection on classes WITHOUT verification labels, every method side by side.

Protocol (the same for every method): score every pool image; choose the threshold on the verified classes'
validation rows (metrics.best_threshold); report detection error and ROC-AUC on (a) the verified classes'
validation rows and (b) the held-out classes' validation rows at that same threshold. Two settings:
"heldout" (the demo's 50 held-out classes lose their verified training rows) and "all" (every class verified;
no held-out column). On the demo, the true labels are known, so the same threshold is also scored against
the truth on every pool image of each group ("truth" columns: ~3000 images per group instead of ~300 rows).

Methods:
    baselines (no verification labels): class-centroid cosine (pipeline/demo.py), kNN label agreement (k=10),
        cleanlab 2.9 on 5-fold cross-validated logistic-regression probabilities (find_label_issues at its own
        threshold, and its label-quality score at a threshold chosen on verified classes)
    CleanNet, the paper's mode (training/cleannet.py train_cleannet, unchanged), 3k steps; 10k steps with dropout 0.2
    CleanNet, the library's robust mode (k-means on each class's core, refs.core_fraction=0.7; margin scores)
    CleanNet with mass-aware reference sets: the attention logit of each k-means centre gets + log(its
        cluster size), so a centre of one far-off noisy image no longer counts as much as the clean majority's;
        and the robust class mean as the only reference (a task on the package's training loop: train_variant)
    post-hoc per CleanNet score: per-class median/MAD standardisation; margin to the best other class
    detection/signals.py: robust (trimmed) class-mean margin; the stacked detector (logistic regression on
        class-agnostic signals, fitted on the verified classes' training rows)

    python -m benchmarks.transfer --workdir=/tmp/transfer_base               # an existing demo workdir
    python -m benchmarks.transfer                                             # builds /tmp/cleannet_transfer
    python -m benchmarks.transfer --workdir=/tmp/transfer_base --setting=heldout --long_steps=0   # quick

Without --workdir, the demo pipeline's steps run first (pipeline/classifier.py, pipeline/extract.py,
pipeline/refs.py; about 8 minutes on 2 CPU cores); complete steps of an existing workdir are reused. Nothing is
written into --workdir except by those steps; CleanNet runs train in temporary folders.

The settings and their scoring are in transfer_setting.py, the CleanNet variants in transfer_variants.py
(beside this file; run it as a module from the repository root, `python -m benchmarks.transfer`).
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.transfer_setting import Setting, build_workdir, evaluate, load_setting
from benchmarks.transfer_variants import cleanlab_probabilities, own, reference_masses, train_library, train_variant
from cleannet_tf import ops
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.detection import stacking
from cleannet_tf.pipeline import demo as pipeline_demo
from cleannet_tf.pipeline import records


def kilo(steps: int) -> str:
    return f"{steps / 1000:g}k steps"




def margin(similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return ops.own_and_margin(similarities, labels)[1]



def run_setting(setting: Setting, args, shared: dict) -> list[dict]:
    data = setting.data
    num_classes = len(data.class_names)
    results = []

    def add(method, scores=None, seconds=0.0, *, flagged=None, note=""):
        row = {"setting": setting.name, "method": method, "seconds": seconds, "note": note,
               **evaluate(scores, setting, flagged=flagged)}
        results.append(row)
        print(format_row(row), flush=True)

    print(f"\n== setting: {setting.name} ({int(data.heldout_classes.sum())} held-out classes, "
          f"{len(data.verified_train)} verified training rows, {len(data.validation)} validation rows)")
    print(HEADER)

    # Baselines: no verification labels.
    start = time.perf_counter()
    pool = np.ones(len(data.labels), bool)
    add("class-centroid cosine", pipeline_demo.centroid_cosine_scores(data.features, data.labels, pool, num_classes),
        time.perf_counter() - start)
    start = time.perf_counter()
    x = ops.log_normalize(data.features)
    add("kNN agreement k=10", detection_signals.knn_label_agreement(x, data.labels, k=10), time.perf_counter() - start)
    if "cleanlab" not in args.skip:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        if "cleanlab" not in shared:  # label-free: the same for both settings
            start = time.perf_counter()
            probabilities = cleanlab_probabilities(data, args.seed)
            probability_seconds = time.perf_counter() - start
            start = time.perf_counter()
            issues = find_label_issues(data.labels, probabilities)
            issue_seconds = time.perf_counter() - start
            shared["cleanlab"] = (probabilities, probability_seconds, issues, issue_seconds)
        probabilities, probability_seconds, issues, issue_seconds = shared["cleanlab"]
        add("cleanlab find_label_issues (own thr.)", seconds=probability_seconds + issue_seconds, flagged=issues,
            note=f"flags {issues.mean():.0%} of the pool")
        start = time.perf_counter()
        quality = get_label_quality_scores(data.labels, probabilities)
        add("cleanlab label quality (thr. on verif.)", quality, probability_seconds + time.perf_counter() - start)

    # CleanNet in the library's modes (train_lib.train_cleannet, unchanged).
    if "paper" not in args.skip:
        similarities, seconds = train_library(setting, mode="paper", steps=args.steps, dropout=0.0, seed=args.seed)
        scores = own(similarities, data.labels)
        add(f"CleanNet paper {kilo(args.steps)}", scores, seconds)
        add("  + per-class median/MAD", detection_signals.per_class_standardize(scores, data.labels,
                                                                        num_classes=num_classes), seconds)
        add("  + margin to best other class", margin(similarities, data.labels), seconds)
    if args.long_steps and "paper_long" not in args.skip:
        similarities, seconds = train_library(setting, mode="paper", steps=args.long_steps, dropout=0.2,
                                              seed=args.seed)
        scores = own(similarities, data.labels)
        add(f"CleanNet paper {kilo(args.long_steps)}, dropout 0.2", scores, seconds)
        add("  + per-class median/MAD", detection_signals.per_class_standardize(scores, data.labels,
                                                                        num_classes=num_classes), seconds)
    if "robust" not in args.skip:
        for steps in [args.steps] + ([args.long_steps] if args.long_steps else []):
            similarities, seconds = train_library(setting, mode="robust", steps=steps, dropout=0.0, seed=args.seed)
            add(f"CleanNet robust mode {kilo(steps)} (margin)", margin(similarities, data.labels), seconds)
            add("  its cosine score (no margin)", own(similarities, data.labels), seconds)

    # CleanNet with mass-aware reference sets: k-means centres with a log(cluster size) attention bias, and
    # the robust class mean (the mean of the 70% of the class nearest its trimmed mean) as the only reference.
    mass_similarities = None
    references = setting.reference_sets.references
    if "mass" not in args.skip:
        start = time.perf_counter()
        log_mass = np.log(np.maximum(reference_masses(data, references), 0.5))
        mass_seconds = time.perf_counter() - start
        for steps in [args.steps] + ([args.long_steps] if args.long_steps else []):
            similarities, seconds = train_variant(setting, references, log_mass, steps=steps, dropout=0.0,
                                                  seed=args.seed)
            seconds += mass_seconds
            scores = own(similarities, data.labels)
            add(f"CleanNet mass-aware refs {kilo(steps)}", scores, seconds)
            add("  + per-class median/MAD", detection_signals.per_class_standardize(scores, data.labels,
                                                                            num_classes=num_classes), seconds)
            add("  + margin to best other class", margin(similarities, data.labels), seconds)
            mass_similarities = similarities
    if "robust_mean" not in args.skip:
        start = time.perf_counter()
        members = detection_signals.robust_class_members(ops.log_normalize(data.features), data.labels,
                                                          num_classes=num_classes)
        robust_mean = np.stack([data.features[members & (data.labels == c)].mean(axis=0)
                                for c in range(num_classes)])[:, None, :].astype(np.float32)
        means_seconds = time.perf_counter() - start
        steps = args.long_steps or args.steps
        similarities, seconds = train_variant(setting, robust_mean, np.zeros((num_classes, 1), np.float32),
                                              steps=steps, dropout=0.0, seed=args.seed)
        seconds += means_seconds
        scores = own(similarities, data.labels)
        add(f"CleanNet robust-mean reference {kilo(steps)}", scores, seconds)
        add("  + margin to best other class", margin(similarities, data.labels), seconds)

    # Post-hoc detectors (detection_signals.py).
    start = time.perf_counter()
    signals, names = detection_signals.detection_signals(data.features, data.labels, num_classes=num_classes)
    signal_seconds = time.perf_counter() - start
    add("robust class-mean margin (no verif.)", signals[:, names.index("robust_margin")], signal_seconds)
    train = data.verified_train  # verified classes only: held-out classes have no training rows
    for model in stacking.MODELS:
        start = time.perf_counter()
        detector = stacking.StackedDetector(model=model, seed=args.seed).fit(signals[train],
                                                                              data.verification[train])
        add(f"stacked detector ({model})", detector.score(signals), signal_seconds + time.perf_counter() - start)
        if model == "logistic":
            weights = detector.coefficients(names)
            print("    weights: " + ", ".join(f"{k} {v:+.2f}" for k, v in weights.items()))
    if mass_similarities is not None:
        own_scores = own(mass_similarities, data.labels)
        extra = np.stack([own_scores, margin(mass_similarities, data.labels),
                          detection_signals.per_class_standardize(own_scores, data.labels, num_classes=num_classes)], 1)
        start = time.perf_counter()
        both = np.concatenate([signals, extra], axis=1)
        detector = stacking.StackedDetector(seed=args.seed).fit(both[train], data.verification[train])
        add("stacked (logistic) + CleanNet mass-aware", detector.score(both), signal_seconds + time.perf_counter()
            - start, note="CleanNet saw these training rows")
    return results



HEADER = (f"{'method':<42} {'error V':>8} {'error H':>8} {'AUC V':>7} {'AUC H':>7} {'truth V':>8} {'truth H':>8} "
          f"{'time':>7}")



def format_row(row: dict) -> str:
    def pct(key):
        return f"{row[key]:8.1%}" if key in row else f"{'n/a':>8}"

    def auc(key):
        return f"{row[key]:7.3f}" if key in row else f"{'n/a':>7}"

    return (f"{row['method']:<42} {pct('error_verified')} {pct('error_heldout')} {auc('auc_verified')} "
            f"{auc('auc_heldout')} {pct('truth_error_verified')} {pct('truth_error_heldout')} "
            f"{row['seconds']:6.1f}s" + (f"  ({row['note']})" if row["note"] else ""))



FLAGS = flags.FLAGS



_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "demo.py"),
    "The demo pipeline config file.")



flags.DEFINE_string("workdir", "", "a demo pipeline workdir (default: build --build_dir)")



flags.DEFINE_string("build_dir", "/tmp/cleannet_transfer", "where to build one when no --workdir")



flags.DEFINE_enum("setting", "both", ['both', 'heldout', 'all'], "setting")



flags.DEFINE_integer("steps", 3000, "CleanNet steps (the demo config's)")



flags.DEFINE_integer("long_steps", 10000, "the longer CleanNet runs; 0 skips them")



flags.DEFINE_integer("seed", 0, "CleanNet / cross-validation seed (not the data's)")



flags.DEFINE_integer("data_seed", 0,
                     "config.seed of the demo data and pipeline when building (a new --build_dir per seed)")



flags.DEFINE_list("skip", [], "comma list of: cleanlab, paper, paper_long, robust, mass, robust_mean")



flags.DEFINE_string("json", "", "also write the rows to this .json file")



def main(argv) -> None:
    del argv  # flags only
    args = FLAGS
    logging.set_verbosity(logging.WARNING)

    config = _CONFIG.value
    config.seed = args.data_seed
    workdir = os.path.abspath(args.workdir or args.build_dir)
    if not args.workdir:
        build_workdir(config, workdir)
    for step in ("extract", "refs"):
        if not records.step_complete(step, config, workdir):
            raise SystemExit(f"{workdir} has no complete {step} step; run without --workdir to build one.")
    print(f"workdir {workdir}; CleanNet seed {args.seed}; {os.cpu_count()} CPUs")
    settings = ("heldout", "all") if args.setting == "both" else (args.setting,)
    rows, shared = [], {}
    start = time.perf_counter()
    for name in settings:
        rows += run_setting(load_setting(config, workdir, name, shared), args, shared)
    print(f"\nV = verified classes' validation rows (threshold chosen there), H = held-out classes' validation rows "
          f"at that threshold; truth = the same threshold against the true labels of every pool image of the group. "
          f"Total {time.perf_counter() - start:.0f} s.")
    for name in settings:
        print(f"\n== {name}\n{HEADER}")
        for row in rows:
            if row["setting"] == name:
                print(format_row(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)



if __name__ == "__main__":
    app.run(main)
