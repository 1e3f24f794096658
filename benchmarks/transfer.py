"""Benchmark: label-noise detection on classes WITHOUT verification labels, every method side by side.

Protocol (the same for every method): score every pool image; choose the threshold on the verified classes'
validation rows (metrics.best_threshold); report detection error and ROC-AUC on (a) the verified classes'
validation rows and (b) the held-out classes' validation rows at that same threshold. Two settings:
"heldout" (the demo's 50 held-out classes lose their verified training rows) and "all" (every class verified;
no held-out column). On the demo, the true labels are known, so the same threshold is also scored against
the truth on every pool image of each group ("truth" columns: ~3000 images per group instead of ~300 rows).

Methods:
    baselines (no verification labels): class-centroid cosine (demo_lib), kNN label agreement (k=10),
        cleanlab 2.9 on 5-fold cross-validated logistic-regression probabilities (find_label_issues at its own
        threshold, and its label-quality score at a threshold chosen on verified classes)
    CleanNet, the paper's mode (train_lib.train_cleannet, unchanged), 3k steps; 10k steps with dropout 0.2
    CleanNet, the library's robust mode (k-means on each class's core, refs.core_fraction=0.7; margin scores)
    CleanNet with mass-aware reference sets: the attention logit of each k-means centre gets + log(its
        cluster size), so a centre of one far-off noisy image no longer counts as much as the clean majority's;
        and the robust class mean as the only reference (a task on the package's training loop: train_variant)
    post-hoc per CleanNet score: per-class median/MAD standardisation; margin to the best other class
    detectors.py: robust (trimmed) class-mean margin; the stacked detector (logistic regression on
        class-agnostic signals, fitted on the verified classes' training rows)

    python benchmarks/transfer.py --workdir=/tmp/transfer_base               # an existing demo workdir
    python benchmarks/transfer.py                                             # builds /tmp/cleannet_transfer
    python benchmarks/transfer.py --workdir=/tmp/transfer_base --setting=heldout --long_steps=0   # quick

Without --workdir, the demo pipeline's steps run first (pipeline.run_train_classifier, extract_lib.run_extract,
pipeline.run_refs; about 8 minutes on 2 CPU cores); complete steps of an existing workdir are reused. Nothing is
written into --workdir except by those steps; CleanNet runs train in temporary folders.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from cleannet_tf import config as config_lib  # noqa: E402
from cleannet_tf import ops
from cleannet_tf.data import demo
from cleannet_tf.data import table as datasets
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.detection import metrics
from cleannet_tf.detection import signals as detectors
from cleannet_tf.features import pool as train_data
from cleannet_tf.features import references as references_lib  # noqa: E402
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model.cleannet import encode_classes, query_encoder_of, reference_encoder_of  # noqa: E402
from cleannet_tf.pipeline import demo as demo_lib
from cleannet_tf.pipeline import records
from cleannet_tf.pipeline import table as table_lib
from cleannet_tf.pipeline.classifier import run_train_classifier
from cleannet_tf.pipeline.extract import open_features, run_extract
from cleannet_tf.pipeline.refs import reference_rows, run_refs
from cleannet_tf.pipeline.workdir import references_path
from cleannet_tf.training import cleannet
from configs import demo as demo_config  # noqa: E402

HELDOUT = 50  # the demo's held-out list
ROBUST_CORE_FRACTION = 0.7  # refs.core_fraction of the library's robust mode (configs/demo.py)


# --------------------------------------------------------------------------- data


def build_workdir(config, workdir: str) -> None:
    """Runs the demo pipeline's steps before CleanNet, skipping complete ones."""
    table = load_table(config, workdir)
    if not records.step_complete("train_classifier", config, workdir):
        print(f"[build] training the classifier on the noisy labels -> {workdir}/classifier", flush=True)
        run_train_classifier(config, workdir, table=table, progress=False)
    if not records.step_complete("extract", config, workdir):
        print(f"[build] extracting features -> {workdir}/features", flush=True)
        run_extract(config, workdir, table=table, progress=False)
    if not records.step_complete("refs", config, workdir):
        print(f"[build] reference sets -> {workdir}/references.npz", flush=True)
        run_refs(config, workdir, table=table, progress=False)


def load_table(config, workdir: str) -> datasets.LabelTable:
    """load_table; for demo data written by an older generator version, read it as it is."""
    try:
        return table_lib.load_table(config, workdir)
    except ValueError as error:
        if "other parameters" not in str(error):
            raise
        root = config_lib.resolve_data_root(config, workdir)
        logging.warning("%s was made by another demo-generator version; reading it as it is.", root)
        table = read_food101n(root)
        if config.data.demo_heldout:
            heldout_list = os.path.join(root, "meta", f"classes_heldout_{config.data.demo_heldout}.txt")
            table = datasets.apply_heldout(table, datasets.read_heldout_list(heldout_list, table.class_names))
        return table


@dataclasses.dataclass
class Setting:
    name: str
    config: object
    data: train_data.TrainingData
    reference_sets: ReferenceSets  # the paper's: k-means on every image of a class (refs.core_fraction = 1)
    core_reference_sets: ReferenceSets  # the library's robust mode: k-means on each class's core
    truth_correct: np.ndarray | None  # (P,) bool: the noisy label equals the true label (demo only)


def reference_sets_for(config, workdir: str, table: datasets.LabelTable, core_fraction: float) -> ReferenceSets:
    """WORKDIR/references.npz when it was built with `core_fraction`, else built here in memory (not saved)."""
    existing = ReferenceSets.load(references_path(workdir))
    if float(existing.metadata.get("core_fraction", 1.0)) == core_fraction:
        return existing
    features = open_features(config, workdir, table)
    refs = config.refs
    return references_lib.build_reference_sets(
        features.gather, table.labels, reference_rows(table, features.valid()), table.class_names,
        num_references=refs.num_references, n_init=refs.n_init, max_iter=refs.max_iter, tol=refs.tol,
        max_samples_per_class=refs.max_samples_per_class, seed=config.seed, core_fraction=core_fraction,
        progress=False)


def load_setting(base_config, workdir: str, name: str, cache: dict) -> Setting:
    config = copy.deepcopy(base_config)
    config.data.demo_heldout = HELDOUT if name == "heldout" else 0
    table = load_table(config, workdir)
    features = open_features(config, workdir, table)
    if "references" not in cache:  # label-free: the same in both settings
        cache["references"] = (reference_sets_for(config, workdir, table, 1.0),
                               reference_sets_for(config, workdir, table, ROBUST_CORE_FRACTION))
    reference_sets, core_reference_sets = cache["references"]
    data = train_data.prepare_training_data(table, features, reference_sets.class_names,
                                            reference_sets.references.shape[2], reference_sets.counts)
    truth_correct = None
    truth_file = os.path.join(config_lib.resolve_data_root(config, workdir), "meta", "truth.tsv")
    if os.path.exists(truth_file):
        truth = demo.read_demo_truth(os.path.dirname(os.path.dirname(truth_file)))
        true = np.array([truth.get(key, -1) for key in table.keys[data.table_rows]])
        truth_correct = true == data.labels
    return Setting(name, config, data, reference_sets, core_reference_sets, truth_correct)


# --------------------------------------------------------------------------- protocol


def evaluate(scores: np.ndarray | None, setting: Setting, *, flagged: np.ndarray | None = None) -> dict:
    """The protocol on pool scores (P,) (high = label correct), or on a fixed (P,) bool `flagged` decision."""
    data = setting.data
    rows = data.validation
    labels, verification = data.labels[rows], data.verification[rows]
    held = data.heldout_classes[labels]
    verified_train = np.zeros(len(data.labels), bool)
    verified_train[data.verified_train] = True
    result = {}
    if flagged is None:
        threshold, _ = metrics.best_threshold(scores[rows][~held], verification[~held])
        flagged = scores < threshold
        result["threshold"] = threshold
    for tag, mask in (("verified", ~held), ("heldout", held)):
        if not mask.any():
            continue
        wrong = verification[mask] == 0
        result[f"error_{tag}"] = float(np.mean(flagged[rows][mask] != wrong))
        if scores is not None and 0 < wrong.sum() < len(wrong):
            result[f"auc_{tag}"] = float(metrics.detection_metrics(scores[rows][mask], verification[mask],
                                                                   0.0)["roc_auc"])
        if setting.truth_correct is not None:  # every pool image of the group but the fitted (verified) rows
            pool = (data.heldout_classes[data.labels] == (tag == "heldout")) & ~verified_train
            result[f"truth_error_{tag}"] = float(np.mean(flagged[pool] == setting.truth_correct[pool]))
    return result


# --------------------------------------------------------------------------- baselines


def cleanlab_probabilities(data: train_data.TrainingData, seed: int) -> np.ndarray:
    """(P, C) out-of-fold probabilities of sklearn LogisticRegression on ln(1+x) features (ops), 5 folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = ops.signed_log1p(data.features)
    return cross_val_predict(LogisticRegression(max_iter=500), x, data.labels, method="predict_proba",
                             cv=StratifiedKFold(5, shuffle=True, random_state=seed))


# --------------------------------------------------------------------------- CleanNet


def cleannet_similarities(model: keras.Model, features: np.ndarray, references: np.ndarray,
                          log_mass: np.ndarray | None = None) -> np.ndarray:
    """(P, C) cosine of every image's query embedding to every class embedding (dropout off)."""
    if log_mass is None:
        classes = encode_classes(model, references).numpy()
    else:
        classes = encode_references(model, tf.constant(references), tf.constant(log_mass, tf.float32),
                                    training=False).numpy()
    classes /= np.maximum(np.linalg.norm(classes, axis=1, keepdims=True), 1e-12)
    query = query_encoder_of(model)(features, training=False)["query_embedding"].numpy()
    query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    return query @ classes.T


def run_config(setting: Setting, *, steps: int, dropout: float, seed: int):
    """The setting's config for one CleanNet run: lr decay at half, evaluation every 500 (1000 past 5k) steps."""
    config = copy.deepcopy(setting.config)
    config.seed = seed
    config.train.steps = steps
    config.train.lr_decay_steps = max(1, steps // 2)
    config.train.eval_every = 500 if steps <= 5000 else 1000
    config.train.checkpoint_every = steps
    config.cleannet.dropout_rate = dropout
    return config


def train_best(setting: Setting, reference_sets: ReferenceSets, config, *, task=None,
               log_mass: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """train_lib.train_cleannet in a temporary folder; (P, C) similarities of its best model, seconds."""
    with tempfile.TemporaryDirectory(prefix="transfer-cleannet-") as output_dir:
        start = time.perf_counter()
        cleannet.train_cleannet(setting.data, reference_sets, config, output_dir, progress=False, task=task)
        seconds = time.perf_counter() - start
        model = keras.models.load_model(os.path.join(output_dir, "model.keras"))
    return cleannet_similarities(model, setting.data.features, reference_sets.references, log_mass), seconds


def train_library(setting: Setting, *, mode: str, steps: int, dropout: float, seed: int) -> tuple[np.ndarray, float]:
    """The library's train_cleannet; (P, C) similarities of its best model.

    mode "paper": k-means on every image, best step by the cosine score's error (the method as published);
    "robust": k-means on each class's core (refs.core_fraction), best step by the margin score's error.
    """
    config = run_config(setting, steps=steps, dropout=dropout, seed=seed)
    config.cleannet.mode = mode
    config.refs.core_fraction = 1.0 if mode == "paper" else ROBUST_CORE_FRACTION
    return train_best(setting, setting.reference_sets if mode == "paper" else setting.core_reference_sets, config)


def reference_masses(data: train_data.TrainingData, references: np.ndarray) -> np.ndarray:
    """(C, K) cluster sizes: pool images of class c whose nearest centre (squared L2, as k-means) is slot k.

    Repeated slots (classes with fewer than K distinct images) share their vector's images.
    """
    masses = np.zeros(references.shape[:2], np.float64)
    for c in range(references.shape[0]):
        x = data.features[data.labels == c]
        centres = references[c]
        distances = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
        nearest = distances.argmin(axis=1)
        _, distinct, copies = np.unique(centres, axis=0, return_inverse=True, return_counts=True)
        counts = np.bincount(nearest, minlength=len(centres)).astype(np.float64)
        for slot in range(len(centres)):  # split each distinct vector's images over its copies
            same = distinct == distinct[slot]
            masses[c, slot] = counts[same].sum() / copies[distinct[slot]]
    return masses


def encode_references(model: keras.Model, references, log_mass, *, training: bool):
    """The reference encoder with an additive attention bias: (B, K, D), (B, K) -> class embeddings (B, E).

    Same layers and weights as the model's reference encoder; attention logits e_i = u_i . c + log_mass_i.
    With log_mass = 0 this is exactly the paper's encoder.
    """
    encoder = reference_encoder_of(model)
    hidden = encoder.get_layer("feature_normalization")(references)
    hidden = encoder.get_layer("reference_hidden")(hidden)
    if any(layer.name == "reference_dropout" for layer in encoder.layers):
        hidden = encoder.get_layer("reference_dropout")(hidden, training=training)
    values = encoder.get_layer("reference_values")(hidden)
    keys = encoder.get_layer("reference_keys")(values)
    logits = tf.einsum("bka,a->bk", keys, encoder.get_layer("attention_pooling").context) + log_mass
    attention = tf.nn.softmax(logits, axis=-1)
    return encoder.get_layer("class_embedding")(tf.einsum("bk,bkh->bh", attention, values))


class MassAwareTask(cleannet.CleanNetTask):
    """CleanNetTask whose reference encoder adds an attention bias log_mass (C, K); best step by the cosine."""

    def __init__(self, setting: Setting, references: np.ndarray, log_mass: np.ndarray, config):
        counts = np.full(len(references), references.shape[1], np.int32)
        reference_sets = ReferenceSets(references, counts, setting.data.class_names,
                                       np.zeros(len(references), np.int64))
        super().__init__(setting.data, reference_sets, config, encoding="per_class")
        self.log_mass = log_mass.astype(np.float32)

    def build(self) -> None:
        super().build()
        self.log_mass_t = tf.constant(self.log_mass)

    def class_embeddings(self, classes, *, training: bool):
        return encode_references(self.model, tf.gather(self.references, classes),
                                 tf.gather(self.log_mass_t, classes), training=training)

    def pool_scores(self, rows: np.ndarray) -> np.ndarray:
        similarities = cleannet_similarities(self.model, self.data.features[rows], self.reference_sets.references,
                                             self.log_mass)
        return own(similarities, self.data.labels[rows])


def train_variant(setting: Setting, references: np.ndarray, log_mass: np.ndarray, *, steps: int, dropout: float,
                  seed: int) -> tuple[np.ndarray, float]:
    """The package's training loop (train_lib.train_cleannet: one device, per-class encoding, same sampler,
    losses, optimiser and best-step selection) on other reference sets (C, K, D) and with an attention bias
    log_mass (C, K); (P, C) similarities of the best step. With the library's references and log_mass = 0 it is
    train_lib.train_cleannet in mode "paper"."""
    config = run_config(setting, steps=steps, dropout=dropout, seed=seed)
    task = MassAwareTask(setting, references, log_mass, config)
    return train_best(setting, task.reference_sets, config, task=task, log_mass=log_mass)


def kilo(steps: int) -> str:
    return f"{steps / 1000:g}k steps"


def own(similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return ops.own_and_margin(similarities, labels)[0]


def margin(similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return ops.own_and_margin(similarities, labels)[1]


# --------------------------------------------------------------------------- the table


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
    add("class-centroid cosine", demo_lib.centroid_cosine_scores(data.features, data.labels, pool, num_classes),
        time.perf_counter() - start)
    start = time.perf_counter()
    x = ops.log_normalize(data.features)
    add("kNN agreement k=10", detectors.knn_label_agreement(x, data.labels, k=10), time.perf_counter() - start)
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
        add("  + per-class median/MAD", detectors.per_class_standardize(scores, data.labels,
                                                                        num_classes=num_classes), seconds)
        add("  + margin to best other class", margin(similarities, data.labels), seconds)
    if args.long_steps and "paper_long" not in args.skip:
        similarities, seconds = train_library(setting, mode="paper", steps=args.long_steps, dropout=0.2,
                                              seed=args.seed)
        scores = own(similarities, data.labels)
        add(f"CleanNet paper {kilo(args.long_steps)}, dropout 0.2", scores, seconds)
        add("  + per-class median/MAD", detectors.per_class_standardize(scores, data.labels,
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
            add("  + per-class median/MAD", detectors.per_class_standardize(scores, data.labels,
                                                                            num_classes=num_classes), seconds)
            add("  + margin to best other class", margin(similarities, data.labels), seconds)
            mass_similarities = similarities
    if "robust_mean" not in args.skip:
        start = time.perf_counter()
        members = detectors.robust_class_members(ops.log_normalize(data.features), data.labels, num_classes=num_classes)
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

    # Post-hoc detectors (detectors.py).
    start = time.perf_counter()
    signals, names = detectors.detection_signals(data.features, data.labels, num_classes=num_classes)
    signal_seconds = time.perf_counter() - start
    add("robust class-mean margin (no verif.)", signals[:, names.index("robust_margin")], signal_seconds)
    train = data.verified_train  # verified classes only: held-out classes have no training rows
    for model in detectors.MODELS:
        start = time.perf_counter()
        detector = detectors.StackedDetector(model=model, seed=args.seed).fit(signals[train],
                                                                              data.verification[train])
        add(f"stacked detector ({model})", detector.score(signals), signal_seconds + time.perf_counter() - start)
        if model == "logistic":
            weights = detector.coefficients(names)
            print("    weights: " + ", ".join(f"{k} {v:+.2f}" for k, v in weights.items()))
    if mass_similarities is not None:
        own_scores = own(mass_similarities, data.labels)
        extra = np.stack([own_scores, margin(mass_similarities, data.labels),
                          detectors.per_class_standardize(own_scores, data.labels, num_classes=num_classes)], 1)
        start = time.perf_counter()
        both = np.concatenate([signals, extra], axis=1)
        detector = detectors.StackedDetector(seed=args.seed).fit(both[train], data.verification[train])
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="", help="a demo pipeline workdir (default: build --build_dir)")
    parser.add_argument("--build_dir", default="/tmp/cleannet_transfer", help="where to build one when no --workdir")
    parser.add_argument("--setting", choices=("both", "heldout", "all"), default="both")
    parser.add_argument("--steps", type=int, default=3000, help="CleanNet steps (the demo config's)")
    parser.add_argument("--long_steps", type=int, default=10000, help="the longer CleanNet runs; 0 skips them")
    parser.add_argument("--seed", type=int, default=0, help="CleanNet / cross-validation seed (not the data's)")
    parser.add_argument("--data_seed", type=int, default=0,
                        help="config.seed of the demo data and pipeline when building (a new --build_dir per seed)")
    parser.add_argument("--skip", default="",
                        help="comma list of: cleanlab, paper, paper_long, robust, mass, robust_mean")
    parser.add_argument("--json", default="", help="also write the rows to this .json file")
    args = parser.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    logging.set_verbosity(logging.WARNING)

    config = demo_config.get_config()
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
    main()
