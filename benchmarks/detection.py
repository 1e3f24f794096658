"""Benchmark: label-noise detection by CleanNet, cleanlab, kNN agreement and class-centroid cosine.

Every method scores the same features of the same images; the threshold of each is chosen on the verified
classes' validation rows (as cleannet-verify does) and applied unchanged to the held-out classes' validation
rows. cleanlab 2.9 also flags at its own threshold (find_label_issues on 5-fold cross-validated
logistic-regression probabilities, the way its docs use it on fixed features). Two settings: "heldout" (the
config's held-out classes have no verified training rows) and "all" (every class verified).

    python benchmarks/detection.py --workdir=/tmp/cleannet_demo          # a finished `cleannet-demo` workdir
    python benchmarks/detection.py --workdir=/tmp/food --config=configs/food101n.py \\
        --config.data.root=/data/Food-101N_release --config.data.heldout_list=/data/classes_heldout_50.txt

Steps before CleanNet training (classifier, extract, refs) run first when the workdir lacks them. CleanNet
trains in a temporary folder (the workdir's own cleannet/ and verify/ are not touched). Needs the `bench`
extra (cleanlab).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from cleannet_tf import ops
from cleannet_tf.detection import fit, verifier  # noqa: E402
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.model.cleannet import MODE_SCORING
from cleannet_tf.pipeline import demo, records, runner
from cleannet_tf.pipeline.artifacts import load_training_inputs
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.training import cleannet as cleannet_training
from cleannet_tf.training import metrics

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Pipeline config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cleannet_demo", "Workdir of the pipeline's earlier steps.")
_SETTINGS = flags.DEFINE_list("settings", ["heldout", "all"], "heldout and/or all (every class verified).")
_SKIP = flags.DEFINE_list("skip", [], "Methods to skip: cleanlab, knn, cleannet.")
_STEPS = flags.DEFINE_integer("steps", 0, "CleanNet training steps (0: the config's train.steps).")

HEADER = (f"{'method':<44} {'error V':>8} {'error H':>8} {'AUC V':>6} {'AUC H':>6} {'seconds':>8}")


def evaluate(scores: np.ndarray | None, data, *, flagged: np.ndarray | None = None) -> dict:
    """Detection error / ROC-AUC on verified (V) and held-out (H) classes' validation rows; scores (P,)."""
    rows = data.validation
    verification = data.verification[rows]
    held = data.heldout_classes[data.labels[rows]]
    if flagged is None:
        threshold, _ = metrics.best_threshold(scores[rows][~held], verification[~held])
        flagged = scores < threshold
    result = {}
    for tag, mask in (("V", ~held), ("H", held)):
        if mask.any():
            result[f"error {tag}"] = float(np.mean(flagged[rows][mask] != (verification[mask] == 0)))
            if scores is not None:
                result[f"AUC {tag}"] = metrics.detection_metrics(scores[rows][mask], verification[mask],
                                                                 0.0)["roc_auc"]
    return result


def format_row(method: str, result: dict, seconds: float) -> str:
    def cell(key, width, fmt):
        return f"{format(result[key], fmt):>{width}}" if key in result else f"{'-':>{width}}"

    return (f"{method:<44} {cell('error V', 8, '.2%')} {cell('error H', 8, '.2%')} {cell('AUC V', 6, '.3f')} "
            f"{cell('AUC H', 6, '.3f')} {seconds:>8.1f}")


def cleanlab_probabilities(features: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """(P, C) out-of-fold probabilities of a logistic regression on ln(1+x) features, 5 folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = ops.signed_log1p(features)
    return cross_val_predict(LogisticRegression(max_iter=500), x, labels, method="predict_proba",
                             cv=StratifiedKFold(5, shuffle=True, random_state=seed))


def run_setting(config, workdir: str, name: str, shared: dict) -> None:
    config = copy.deepcopy(config)
    if name == "all":
        config.data.demo_heldout = 0
        config.data.heldout_list = ""
    table = load_table(config, workdir)
    data, reference_sets = load_training_inputs(config, workdir, table)
    print(f"\n== setting {name}: {int(data.heldout_classes.sum())} held-out classes of {len(data.class_names)}, "
          f"{len(data.verified_train)} verified training rows, {len(data.validation)} validation rows")
    print(HEADER)
    num_classes = len(data.class_names)

    def add(method, scores=None, seconds=0.0, flagged=None):
        print(format_row(method, evaluate(scores, data, flagged=flagged), seconds), flush=True)

    if "cleannet" not in _SKIP.value:
        start = time.perf_counter()
        training, _ = load_training_inputs(config, workdir, table, for_training=True)
        with tempfile.TemporaryDirectory(prefix="detection-cleannet-") as output_dir:
            cleannet, _ = cleannet_training.train_cleannet(training, reference_sets, config, output_dir, progress=False)
            import keras

            cleannet = keras.saving.load_model(os.path.join(output_dir, "model.keras"))
        train_seconds = time.perf_counter() - start
        calibration = cleannet_training.calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
        variants = [(f"CleanNet {config.cleannet.mode} mode", tuple(verifier.SIGNAL_NAMES[:4]))]
        if config.cleannet.mode == "stacked":
            variants = [("CleanNet stacked: CleanNet + class-mean signals", verifier.SIGNAL_NAMES[:4]),
                        ("  stacked: class-mean cosine + margin", ("class_mean_cosine", "class_mean_margin")),
                        ("  stacked: class-mean margin", ("class_mean_margin",)),
                        ("  stacked: linear classifier score + margin", ("classifier_score", "classifier_margin")),
                        ("  stacked: classifier margin + kNN agreement + class-mean margin",
                         ("classifier_margin", "knn_agreement", "class_mean_margin"))]
        for label, signals in variants:
            # A score on class-mean signals only does not use CleanNet's output: its time is the fit alone.
            uses_cleannet = bool(set(signals) & set(verifier.CLEANNET_SIGNALS))
            start = time.perf_counter()
            model, _ = fit.fit_verifier(cleannet, data, reference_sets, mode=config.cleannet.mode,
                                               class_mean_keep=config.verify.class_mean_keep,
                                               calibration_classes=calibration, signals=tuple(signals),
                                               seed=config.seed)
            scores = verifier.class_scores(model, data.features)[np.arange(len(data.labels)), data.labels]
            add(label, scores, train_seconds * uses_cleannet + time.perf_counter() - start)
        for mode in ("paper", "robust"):
            if mode == config.cleannet.mode:
                continue
            start = time.perf_counter()
            model, _ = fit.fit_verifier(cleannet, data, reference_sets, mode=mode)
            scores = verifier.class_scores(model, data.features)[np.arange(len(data.labels)), data.labels]
            add(f"  same CleanNet, {MODE_SCORING[mode]} score", scores, time.perf_counter() - start)

    start = time.perf_counter()
    add("class-centroid cosine", demo.centroid_cosine_scores(data.features, data.labels,
                                                                 np.ones(len(data.labels), bool), num_classes),
        time.perf_counter() - start)
    start = time.perf_counter()
    x = detection_signals.log_normalize(data.features)
    robust = detection_signals.robust_class_means(x, data.labels, num_classes=num_classes,
                                                  keep=config.verify.class_mean_keep)
    add("robust class-mean margin", detection_signals.own_class_margin(x, data.labels, robust)[1],
        time.perf_counter() - start)
    if "knn" not in _SKIP.value:
        start = time.perf_counter()
        add("kNN agreement k=10", detection_signals.knn_label_agreement(x, data.labels, k=10),
            time.perf_counter() - start)
    if "cleanlab" not in _SKIP.value:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        if "cleanlab" not in shared:  # needs no verification labels: the same in both settings
            start = time.perf_counter()
            probabilities = cleanlab_probabilities(data.features, data.labels, config.seed)
            shared["cleanlab"] = (probabilities, time.perf_counter() - start)
        probabilities, probability_seconds = shared["cleanlab"]
        start = time.perf_counter()
        issues = find_label_issues(data.labels, probabilities)
        add("cleanlab find_label_issues (its threshold)", seconds=probability_seconds + time.perf_counter() - start,
            flagged=issues)
        start = time.perf_counter()
        quality = get_label_quality_scores(data.labels, probabilities)
        add("cleanlab label quality (threshold on V)", quality, probability_seconds + time.perf_counter() - start)


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    if _STEPS.value:
        config.train.steps = _STEPS.value
        config.train.lr_decay_steps = max(1, _STEPS.value // 2)
    workdir = _WORKDIR.value
    table = load_table(config, workdir)
    missing = [step for step in ("train_classifier", "extract", "refs") if not records.step_complete(step, config,
                                                                                                     workdir)]
    if missing:
        logging.info("Running %s first.", missing)
        runner.run_steps(config, workdir, table=table, steps=missing)
    shared: dict = {}
    start = time.perf_counter()
    for name in _SETTINGS.value:
        run_setting(config, workdir, name, shared)
    print(f"\nV: verified classes' validation rows (each method's threshold chosen there); H: held-out classes' "
          f"validation rows at that threshold. Seconds include CleanNet training where the score uses CleanNet's "
          f"output. "
          f"Total {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    app.run(main)
