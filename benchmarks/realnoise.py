"""Benchmark: wrong-label detection on real photos with real label noise, every method on the same features.

On a Food-101N-layout release (meta/classes.txt, imagelist.tsv, verified_train.tsv, verified_val.tsv,
classes_heldout_<H>.txt; made for CIFAR-10N by make_realnoise.py, or a user's own) and its `data.features`
.npz, every method scores every pool image:

    no detection                 every label called right
    cleanlab 2.9                 5-fold cross-validated logistic regression (benchmarks/transfer.py's
                                 cleanlab_probabilities): self-confidence score; find_label_issues (its threshold)
    kNN agreement k=10           detection_signals.knn_label_agreement
    neighbour vote (SimiFeat)    written from Zhu et al., ICML 2022 (see neighbour_vote): a k-NN vote weighted by
                                 similarity, over random feature transforms; score = mean own-label vote share;
                                 "vote rule" = majority over rounds of "another label wins the vote"
    class-centroid cosine        pipeline.demo.centroid_cosine_scores
    CleanNet modes               training.cleannet.train_cleannet + detection.fit.fit_verifier (benchmarks/detection):
                                 cleannet.mode=paper (k-means on every image, cosine score), and the config's
                                 mode (configs/demo.py: stacked, core k-means, calibration classes) with its
                                 verify.signals and the other signal choices, and the margin (robust) score of
                                 that same CleanNet
    stacked + neighbour signals  benchmark-only rows (not a library mode): stacking.StackedDetector on the
                                 class-mean margin, kNN agreement and vote share (fitted on the verified classes'
                                 verified_train rows), and with CleanNet's four signals too (fitted on the
                                 calibration classes' verified_train rows, which CleanNet did not train on)

Protocol, the same for every method: the threshold is the one with the lowest error on the verified classes'
verified_train rows (metrics.best_threshold); error, precision, recall, F1 (wrong label = positive) and ROC-AUC
are measured on verified_val rows, verified classes (V) and held-out classes (H) apart, at that threshold.
Rows with a threshold of their own (find_label_issues, the vote rule) are measured as they flag. CleanNet trains
on the verified_train rows of the classes it sees (the calibration classes' rows it does not see), so its
threshold rows are rows it was fitted on; the stacked weights are fitted by fit_verifier on the calibration
classes' verified rows.

    python -m benchmarks.realnoise --dataset=cifar10n_worst --seeds=0,1,2 --releases=/tmp/realnoise \\
        --features=/work/scratch/realnoise/effl0_features_{release}.npz
    python -m benchmarks.realnoise --root=/data/release --features=/data/features.npz     # one release

With --seeds, a release per seed is made with --make_realnoise (DEST = RELEASES/<dataset>_s<seed>; an existing
one is reused); {release} and {seed} in --features are filled in. Run from the repository root (configs/).
Needs the `bench` extra (cleanlab).
"""

from __future__ import annotations

import copy
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks.transfer_variants import cleanlab_probabilities  # noqa: E402
from cleannet_tf.data import table as data_table
from cleannet_tf.detection import fit as verifier_fit
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.detection import stacking, verifier
from cleannet_tf.features import neighbours
from cleannet_tf.pipeline import demo, records
from cleannet_tf.pipeline.artifacts import load_training_inputs, open_features
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.training import cleannet as cleannet_training
from cleannet_tf.training import metrics, pool

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config of the CleanNet modes.")
_ROOT = flags.DEFINE_string("root", "", "One release (instead of --dataset/--seeds).")
_FEATURES = flags.DEFINE_string("features", "", "data.features .npz; {release} and {seed} are filled in.")
_DATASET = flags.DEFINE_string("dataset", "cifar10n_worst", "make_realnoise.py --dataset.")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Release seeds (one release, and one run, per seed).")
_RELEASES = flags.DEFINE_string("releases", "/tmp/realnoise", "Folder of the releases made per seed.")
_MAKE_REALNOISE = flags.DEFINE_string("make_realnoise", "/work/shared/tools/make_realnoise.py",
                                      "The release maker.")
_MAKE_ARGS = flags.DEFINE_list("make_args", [], "More make_realnoise.py arguments, e.g. --num_train=20000.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch for reference sets (default: a temporary folder).")
_STEPS = flags.DEFINE_integer("steps", 0, "CleanNet training steps (0: the config's train.steps).")
_SKIP = flags.DEFINE_list("skip", [], "Skip: cleanlab, vote, paper, cleannet (every CleanNet mode).")
_K = flags.DEFINE_integer("k", 10, "Neighbours of the kNN agreement and the vote.")
_VOTE_ROUNDS = flags.DEFINE_integer("vote_rounds", 5, "Random feature transforms of the neighbour vote.")
_VOTE_DIM = flags.DEFINE_integer("vote_dim", 256, "Dimension of the vote's random projections.")
_JSON = flags.DEFINE_string("json", "", "Also write every row (per seed) to this .json file, after each release.")
_FROM_JSON = flags.DEFINE_list("from_json", [], "Only print the table of rows saved by --json (these files).")

METRICS = ("error", "precision", "recall", "f1", "roc_auc")


# --------------------------------------------------------------------------- the peers


def neighbour_vote(features: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 10, rounds: int = 5,
                   dim: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A SimiFeat-style k-NN vote (Zhu, Dong, Liu, ICML 2022, from the paper's description): (N, D), (N,) ->
    score (N,) (high = label right), flagged (N,) bool.

    Each round transforms the unit feature rows at random (a Gaussian projection to `dim` dimensions, standing
    in for the paper's random augmentations of the images), finds each row's k nearest rows (cosine), and lets
    them vote for their labels, each with its similarity as weight; the row itself votes for its own label with
    the similarity extrapolated from its two nearest (2 s_1 - s_2). The vote vector is L2-normalised. The score
    is the mean over rounds of the own label's normalised vote; a row is flagged when, in most rounds, another
    label wins the vote.
    """
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    n = len(x)
    rows = np.arange(n)
    score = np.zeros(n)
    lost = np.zeros(n, np.int64)
    for _ in range(rounds):
        z = x @ (rng.standard_normal((x.shape[1], dim)).astype(np.float32) if dim < x.shape[1] else np.eye(
            x.shape[1], dtype=np.float32))
        indices, sims = neighbours.nearest_neighbours(z, k)
        votes = np.zeros((n, num_classes))
        np.add.at(votes, (np.repeat(rows, k), labels[indices].ravel()), np.maximum(sims, 0).ravel())
        votes[rows, labels] += np.maximum(2 * sims[:, 0] - sims[:, min(1, k - 1)], 0)
        votes /= np.maximum(np.linalg.norm(votes, axis=1, keepdims=True), 1e-12)
        score += votes[rows, labels] / rounds
        lost += votes.argmax(axis=1) != labels
    return score, lost > rounds / 2


# --------------------------------------------------------------------------- protocol


def decision(data: pool.TrainingData, scores, flagged) -> tuple[np.ndarray, float]:
    """(scores (P,), threshold): flag scores < the lowest-error threshold on the verified classes' verified_train
    rows, or a method's own `flagged` (P,) bool as scores 0 / 1 at 0.5."""
    if flagged is not None:
        return (~flagged).astype(np.float64), 0.5
    held = data.heldout_classes[data.labels]
    fit = data.verified_train[~held[data.verified_train]]
    threshold, _ = metrics.best_threshold(scores[fit], data.verification[fit])
    return scores, threshold


def evaluate(data: pool.TrainingData, scores: np.ndarray | None = None, *,
             flagged: np.ndarray | None = None) -> dict:
    """Metrics on verified_val rows, V and H apart: threshold from the verified classes' verified_train rows.

    scores (P,) high = label right; or flagged (P,) bool, a decision of the method's own.
    """
    held = data.heldout_classes[data.labels]
    scores, threshold = decision(data, scores, flagged)
    result = {}
    for tag, mask in (("V", ~held[data.validation]), ("H", held[data.validation])):
        rows = data.validation[mask]
        if len(rows):
            m = metrics.detection_metrics(scores[rows], data.verification[rows], threshold)
            result.update({f"{name} {tag}": m[name] for name in METRICS})
            if flagged is not None:
                result.pop(f"roc_auc {tag}")
    return result


def release_roots() -> list[tuple[str, str, int]]:
    """(name, root, seed) of every release: --root, or one per --seeds made with make_realnoise.py."""
    if _ROOT.value:
        return [(os.path.basename(os.path.normpath(_ROOT.value)), _ROOT.value, 0)]
    out = []
    for seed in map(int, _SEEDS.value):
        name = f"{_DATASET.value}_s{seed}"
        root = os.path.join(_RELEASES.value, name)
        if not os.path.exists(os.path.join(root, "meta", "classes.txt")):
            os.makedirs(_RELEASES.value, exist_ok=True)
            subprocess.run([sys.executable, _MAKE_REALNOISE.value, root, f"--dataset={_DATASET.value}",
                            f"--seed={seed}", *_MAKE_ARGS.value], check=True)
        out.append((name, root, seed))
    return out


def release_config(base, name: str, root: str, seed: int):
    """The config of one release: its root, held-out list and features; no demo data."""
    config = copy.deepcopy(base)
    config.seed = seed
    config.data.demo = ""
    config.data.demo_heldout = 0
    config.data.format = "food101n"
    config.data.root = root
    lists = sorted(glob.glob(os.path.join(root, "meta", "classes_heldout_*.txt")))
    if len(lists) > 1:
        raise ValueError(f"{root}/meta has {len(lists)} held-out lists ({lists}); keep one.")
    config.data.heldout_list = lists[0] if lists else ""
    config.data.features = _FEATURES.value.format(release=name, seed=seed)
    if _STEPS.value:
        config.train.steps = _STEPS.value
        config.train.lr_decay_steps = max(1, _STEPS.value // 2)
        config.train.eval_every = min(config.train.eval_every, _STEPS.value)
        config.train.checkpoint_every = _STEPS.value
    return config


def cleannet_rows(config, workdir: str, table: data_table.LabelTable, add) -> tuple[np.ndarray, np.ndarray] | None:
    """CleanNet in the paper's mode and in the config's mode (its signal choices, and its margin score).

    Returns the config-mode CleanNet's (P, 4) verifier.SIGNAL_NAMES of every pool image and its (C,) calibration
    classes (None when the config's mode is paper).
    """
    import keras

    out = None
    runs = [("paper", 1.0, 0.0)] if "paper" not in _SKIP.value else []
    if config.cleannet.mode != "paper":
        runs.append((config.cleannet.mode, config.refs.core_fraction, config.cleannet.calibration_fraction))
    for mode, core_fraction, calibration_fraction in runs:
        run_config = copy.deepcopy(config)
        run_config.cleannet.mode = mode
        run_config.refs.core_fraction = core_fraction
        run_config.cleannet.calibration_fraction = calibration_fraction
        run_dir = os.path.join(workdir, f"{mode}_core{core_fraction:g}")
        start = time.perf_counter()
        if not records.step_complete("refs", run_config, run_dir):
            run_refs(run_config, run_dir, table=table, progress=False)
        training, reference_sets = load_training_inputs(run_config, run_dir, table, for_training=True)
        with tempfile.TemporaryDirectory(prefix="realnoise-cleannet-") as output_dir:
            cleannet_training.train_cleannet(training, reference_sets, run_config, output_dir, progress=False)
            cleannet = keras.saving.load_model(os.path.join(output_dir, "model.keras"))
        train_seconds = time.perf_counter() - start
        data, _ = load_training_inputs(run_config, run_dir, table)
        calibration = cleannet_training.calibration_classes(table, calibration_fraction, run_config.seed)
        if mode == "paper":
            variants = [("CleanNet mode=paper (cosine)", "paper", verifier.SIGNAL_NAMES[:4])]
        else:
            chosen = tuple(config.verify.signals)
            variants = [(f"CleanNet mode={mode}, signals={','.join(chosen)} (config)", mode, chosen)]
            if mode == "stacked":
                for signals in (verifier.SIGNAL_NAMES[:4], ("class_mean_cosine", "class_mean_margin"),
                                ("class_mean_margin",), ("cleannet_cosine", "cleannet_margin"),
                                ("classifier_score", "classifier_margin"),
                                ("classifier_margin", "knn_agreement", "class_mean_margin"),
                                ("cleannet_cosine", "cleannet_margin", "classifier_score", "classifier_margin"),
                                verifier.SIGNAL_NAMES):
                    if signals != chosen:
                        variants.append((f"  stacked, signals={','.join(signals)}", "stacked", signals))
            variants.append(("  same CleanNet, margin score (mode=robust)", "robust", verifier.SIGNAL_NAMES[:4]))
        for label, scoring_mode, signals in variants:
            uses_cleannet = bool(set(signals) & set(verifier.CLEANNET_SIGNALS)) or scoring_mode != "stacked"
            start = time.perf_counter()
            model, _ = verifier_fit.fit_verifier(cleannet, data, reference_sets, mode=scoring_mode,
                                               class_mean_keep=config.verify.class_mean_keep,
                                               calibration_classes=calibration if scoring_mode == "stacked" else None,
                                               signals=tuple(signals),
                                               classifier_rounds=config.verify.classifier_rounds,
                                               seed=run_config.seed)
            scores = verifier.class_scores(model, data.features)[np.arange(len(data.labels)), data.labels]
            add(label, scores, train_seconds * uses_cleannet + time.perf_counter() - start)
            if mode != "paper" and out is None:
                out = verifier.own_class_signals(model, data.features, data.labels,
                                                 names=verifier.SIGNAL_NAMES[:4]), calibration
    return out


def stacked_with_neighbours(data: pool.TrainingData, columns: dict[str, np.ndarray], fit: np.ndarray,
                            seed: int) -> np.ndarray:
    """stacking.StackedDetector (logistic) on the named (P,) signal columns, fitted on pool rows `fit`: (P,)."""
    signals = np.stack(list(columns.values()), axis=1)
    detector = stacking.StackedDetector(seed=seed).fit(signals[fit], data.verification[fit])
    weights = ", ".join(f"{name} {w:+.2f}" for name, w in detector.coefficients(list(columns)).items())
    print(f"    weights: {weights}")
    return detector.score(signals)


def run_release(base_config, name: str, root: str, seed: int) -> list[dict]:
    config = release_config(base_config, name, root, seed)
    table = load_table(config, os.path.join(tempfile.gettempdir(), "realnoise-unused"))
    features = open_features(config, "", table)
    data = pool.prepare_training_data(table, features, table.class_names, features.feature_dim,
                                            np.ones(table.num_classes))
    num_classes = len(data.class_names)
    held = data.heldout_classes[data.labels[data.validation]]
    noise = 1 - data.verification[data.validation].mean()
    print(f"\n== {name}: {len(data.labels)} images, {num_classes} classes ({int(data.heldout_classes.sum())} held "
          f"out), {len(data.verified_train)} verified_train rows, {len(data.validation)} verified_val rows "
          f"({int((~held).sum())} V / {int(held.sum())} H), noise on verified_val {noise:.1%}", flush=True)
    rows: list[dict] = []

    def add(method, scores=None, seconds=0.0, *, flagged=None):
        row = {"release": name, "seed": seed, "method": method, "seconds": seconds,
               **evaluate(data, scores, flagged=flagged)}
        rows.append(row)
        print(f"  {method:<62} error V {row.get('error V', np.nan):.3f} H {row.get('error H', np.nan):.3f}  "
              f"F1 H {row.get('f1 H', np.nan):.3f}  AUC H {row.get('roc_auc H', np.nan):.3f}  {seconds:7.1f} s",
              flush=True)

    add("no detection", flagged=np.zeros(len(data.labels), bool))
    if "cleanlab" not in _SKIP.value:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        start = time.perf_counter()
        probabilities = cleanlab_probabilities(data, seed)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        quality = get_label_quality_scores(data.labels, probabilities, method="self_confidence")
        add("cleanlab self-confidence (5-fold logistic regression)", quality, seconds + time.perf_counter() - start)
        start = time.perf_counter()
        add("cleanlab find_label_issues (its threshold)",
            flagged=find_label_issues(data.labels, probabilities), seconds=seconds + time.perf_counter() - start)
    start = time.perf_counter()
    x = detection_signals.log_normalize(data.features)
    agreement = detection_signals.knn_label_agreement(x, data.labels, k=_K.value)
    knn_seconds = time.perf_counter() - start
    add(f"kNN label agreement k={_K.value}", agreement, knn_seconds)
    extra = {f"knn_agreement_{_K.value}": agreement}
    if "vote" not in _SKIP.value:
        start = time.perf_counter()
        score, flagged = neighbour_vote(data.features, data.labels, num_classes, k=_K.value, rounds=_VOTE_ROUNDS.value,
                                        dim=_VOTE_DIM.value, seed=seed)
        seconds = time.perf_counter() - start
        knn_seconds += seconds
        add(f"neighbour vote (SimiFeat-style) k={_K.value}, {_VOTE_ROUNDS.value} rounds: vote share", score, seconds)
        add("  its vote rule (majority of rounds)", flagged=flagged, seconds=seconds)
        extra["vote_share"] = score
    start = time.perf_counter()
    add("class-centroid cosine", demo.centroid_cosine_scores(data.features, data.labels,
                                                                 np.ones(len(data.labels), bool), num_classes),
        time.perf_counter() - start)
    # Neighbour signals stacked with the class-mean margin (no CleanNet; benchmark-only, not a library mode),
    # fitted on the verified classes' verified_train rows, the rows every threshold comes from.
    start = time.perf_counter()
    robust = detection_signals.robust_class_means(x, data.labels, num_classes=num_classes,
                                                  keep=config.verify.class_mean_keep)
    margin = detection_signals.own_class_margin(x, data.labels, robust)[1]
    fit = data.verified_train[~data.heldout_classes[data.labels[data.verified_train]]]
    add("stacked: class-mean margin + neighbour signals (benchmark-only)",
        stacked_with_neighbours(data, {"class_mean_margin": margin, **extra}, fit, seed),
        knn_seconds + time.perf_counter() - start)
    if "cleannet" not in _SKIP.value:
        if _WORKDIR.value:
            found = cleannet_rows(config, os.path.join(_WORKDIR.value, name), table, add)
        else:
            with tempfile.TemporaryDirectory(prefix="realnoise-refs-") as workdir:
                found = cleannet_rows(config, workdir, table, add)
        if found is not None:  # CleanNet's signals too, fitted where CleanNet did not train: calibration classes
            signals, calibration = found
            calibration_fit = data.verified_train[calibration[data.labels[data.verified_train]]]
            if calibration.any() and len(np.unique(data.verification[calibration_fit])) == 2:
                columns = {name: signals[:, i] for i, name in enumerate(verifier.SIGNAL_NAMES[:4])}
                add("stacked: CleanNet + class-mean + neighbour signals (benchmark-only)",
                    stacked_with_neighbours(data, {**columns, **extra}, calibration_fit, seed), knn_seconds)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Mean over releases per method (error: mean ± standard deviation), V / H in each cell."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    seeds = len({row["release"] for row in rows})
    lines = [f"| method ({seeds} seed{'s' * (seeds > 1)}; V / H) | error | precision | recall | F1 | ROC-AUC | "
             f"seconds |", "|---|---|---|---|---|---|---|"]
    for method in methods:
        mine = [row for row in rows if row["method"] == method]
        cells = []
        for name in METRICS:
            parts = []
            for tag in ("V", "H"):
                values = [row[f"{name} {tag}"] for row in mine if f"{name} {tag}" in row]
                if not values or not np.isfinite(values).all():
                    parts.append("-")
                elif name == "error" and len(values) > 1:
                    parts.append(f"{np.mean(values):.3f}±{np.std(values):.3f}")
                else:
                    parts.append(f"{np.mean(values):.3f}")
            cells.append(" / ".join(parts))
        seconds = np.mean([row["seconds"] for row in mine])
        lines.append(f"| {method.strip()} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if _FROM_JSON.value:
        rows = []
        for path in _FROM_JSON.value:
            with open(path) as f:
                rows += json.load(f)
        print(markdown_table(rows))
        return
    if not _FEATURES.value:
        raise SystemExit("--features is required (a data.features .npz; {release} and {seed} are filled in).")
    start = time.perf_counter()
    rows = []
    for name, root, seed in release_roots():
        rows += run_release(_CONFIG.value, name, root, seed)
        if _JSON.value:  # after each release: a long run's finished releases are kept
            partial = f"{_JSON.value}.{os.getpid()}.partial"
            with open(partial, "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(partial, _JSON.value)
    print(f"\nThresholds from the verified classes' verified_train rows; metrics on verified_val rows of verified "
          f"(V) and held-out (H) classes; wrong label = positive. Total {time.perf_counter() - start:.0f} s.\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    app.run(main)
