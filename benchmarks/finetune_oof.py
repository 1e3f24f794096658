"""Benchmark: out-of-fold fine-tunes against the single fine-tune on every noisy label (issue 20, item 2).

    nice python -m benchmarks.finetune_oof --run_workdir=/work/scratch/photos-bench/worst_s0 \\
        --release=/work/scratch/realnoise/cifar10n_worst_s0 --out=/work/scratch/oof

A network fine-tuned on every noisy label learns the wrong ones too, and its probabilities then agree with them.
Given a finished configs/photos.py workdir (its noisy classifier fine-tuned from a frozen cache), this
1. trains --folds fine-tunes with the run's own recipe (WORKDIR/config.train_classifier.json), fold f on the pool
   rows outside fold f: the fold's rows get weight 0, which the training loop documents as "not read at all"
   (no gradient, not in the held-apart accuracy that picks the epoch, not in BatchNorm statistics), so each fold
   model trains as many steps as the run, from the run's frozen cache (WORKDIR/frozen_cache/<key>, which must be
   complete: nothing is recomputed). Folds are stratified by noisy label, drawn by --fold_seed. Each fold's
   softmax probabilities of its own rows are predicted from the cached frozen outputs (original view, no flip)
   into OUT/<release>/fold_<f>/oof.npz; a killed run resumes fold by fold (and within a fold, from its
   checkpoint). The run's classifier (WORKDIR/classifier/model.keras) predicts every pool row in-sample the same
   way (OUT/<release>/single.npz), and with --refit_single the single fine-tune runs again here, timed as the
   folds are (OUT/<release>/single_refit/: its cost on the same machine load); with --all_epochs the same
   fine-tune without early stopping (no held-apart rows, every epoch: OUT/<release>/single_all_epochs/).
2. compares wrong-label detection on the pool with benchmarks/photos_realnoise.py's protocol (`evaluate`):
   the run's own score (verify/scores.tsv), cleanlab self-confidence and find_label_issues on the single model's
   in-sample and on the out-of-fold probabilities, and the project's stacked score (detection/stacking.py, the
   verify step's operating point) over the own-label probability and margin of each, alone and beside the verify
   step's classifier signals (its linear classifier on the run's features, without the refit round); (e) that
   linear classifier cross-fitted on each fold model's features (fitted on the rows the fold model trained on,
   scoring its fold); the same for the fine-tune without early stopping (in-sample).
3. prints the table and the costs (CPU and wall seconds of the fold fine-tunes against the single one's) and
   writes OUT/<release>.oof.json.

--train_only stops after 1 (for a background run; the report re-reads the saved probabilities).
Needs the `bench` extra (cleanlab).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks import photos_realnoise  # noqa: E402  (evaluate, _load_data, _correct, default_row; its flags)
from benchmarks.photos_truth import read_truth  # noqa: E402
from cleannet_tf import atomic_io  # noqa: E402
from cleannet_tf.data import table as data_table  # noqa: E402
from cleannet_tf.features import block_cache  # noqa: E402
from cleannet_tf.features.store import FeatureStore, table_fingerprint  # noqa: E402
from cleannet_tf.pipeline.frozen_cache import expected_cache_key, resolve_initial_weights  # noqa: E402
from cleannet_tf.pipeline.table import load_table  # noqa: E402
from cleannet_tf.pipeline.workdir import classifier_output_dir, frozen_cache_dir  # noqa: E402
from cleannet_tf.training import finetune  # noqa: E402

_RUN_WORKDIR = flags.DEFINE_string("run_workdir", "", "A finished configs/photos.py run (frozen cache).")
_FOLDS = flags.DEFINE_integer("folds", 5, "Out-of-fold fine-tunes (k).")
_FOLD_SEED = flags.DEFINE_integer("fold_seed", 0, "Seed of the fold assignment.")
_REFIT = flags.DEFINE_bool("refit_single", True, "Also fine-tune on every row again, timed as the folds are.")
_ALL_EPOCHS = flags.DEFINE_bool("all_epochs", True, "Also the single fine-tune without early stopping.")
_TRAIN_ONLY = flags.DEFINE_bool("train_only", False, "Train and predict the folds, no report.")

PREDICT_BATCH = 1024


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run's noisy classifier was trained with (WORKDIR/config.train_classifier.json)."""
    with open(os.path.join(workdir, "config.train_classifier.json")) as f:
        return ml_collections.ConfigDict(json.load(f))


def assign_folds(labels: np.ndarray, rows: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) int: fold of each of `rows` (stratified by label: each class's rows shuffled by `seed`, dealt round
    robin), -1 elsewhere; N = len(labels)."""
    fold = np.full(len(labels), -1, np.int64)
    rng = np.random.default_rng([seed, 20])
    for label in np.unique(labels[rows]):
        members = rng.permutation(rows[labels[rows] == label])
        fold[members] = (np.arange(len(members)) + rng.integers(folds)) % folds
    return fold


def run_cache(workdir: str, key: str | None, table: data_table.LabelTable) -> block_cache.FrozenCache:
    """The run's frozen cache (original view) of `key` for `table`; exits when it is missing or incomplete (the
    fold fine-tunes must read it, not recompute it)."""
    directory = os.path.join(frozen_cache_dir(workdir), str(key), block_cache.VIEWS[0])
    store = FeatureStore(directory) if key and os.path.isdir(directory) else None
    if store is None or not (store.complete and store.finalized) or store.manifest.get(
            "fingerprint") != table_fingerprint(table.keys, table.paths):
        raise SystemExit(f"{directory}: no complete frozen cache of the run's settings for its table; the fold "
                         "fine-tunes must read the run's cache, not recompute it.")
    return block_cache.FrozenCache({block_cache.VIEWS[0]: store}, tuple(store.manifest["extractor"]["shape"]))


def cache_probabilities(classifier: keras.Model, cache: block_cache.FrozenCache, rows: np.ndarray,
                        train_from: str) -> np.ndarray:
    """(len(rows), C) softmax of a whole fine-tuned classifier on `rows`' cached frozen outputs (original view)."""
    trained = block_cache.build_trained_part(cache.shape, train_from, int(classifier.outputs[0].shape[-1]))
    block_cache.copy_weights_by_name(classifier, trained)

    @tf.function
    def predict(frozen):
        return trained(frozen, training=False)["probabilities"]

    out = [predict(tf.constant(cache.gather(rows[start:start + PREDICT_BATCH]), tf.float32)).numpy()
           for start in range(0, len(rows), PREDICT_BATCH)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, classifier.outputs[0].shape[-1]))


def linear_scores(classifier: keras.Model, cache: block_cache.FrozenCache, pool_rows: np.ndarray,
                  fit: np.ndarray, score: np.ndarray, labels: np.ndarray, train_from: str) -> np.ndarray:
    """(sum(score), C) the verify step's linear classifier scores of the `score` rows: a fine-tuned model's features
    (its trained part on the cached frozen outputs) of every pool row (P,), the ridge classifier (detection/signals.py
    linear_classifier on log-normalised features) fitted on the `fit` rows. fit, score (P,) bool; labels (P,).
    A fold model's rows are cross-fitted (fit: the rows it trained on, score: its fold)."""
    from cleannet_tf import ops
    from cleannet_tf.detection import signals as detection_signals

    part = block_cache.build_features_part(classifier, cache.shape, train_from)

    @tf.function
    def features_of(frozen):
        return part(frozen, training=False)["features"]

    features = np.concatenate([features_of(tf.constant(cache.gather(pool_rows[start:start + PREDICT_BATCH]),
                                                        tf.float32)).numpy()
                               for start in range(0, len(pool_rows), PREDICT_BATCH)])
    x = ops.log_normalize(features)
    weights, bias = detection_signals.linear_classifier(x[fit], labels[fit],
                                                        num_classes=int(classifier.outputs[0].shape[-1]))
    return (x[score].astype(np.float64) @ weights + bias).astype(np.float64)


def _write_npz(path: str, **arrays) -> None:
    with atomic_io.atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def _usage() -> tuple[float, float]:
    """(CPU seconds of this process and its children so far, wall clock)."""
    cpu = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return cpu, time.time()


def train_folds(config: ml_collections.ConfigDict, workdir: str, table: data_table.LabelTable, out: str,
                folds: int, seed: int) -> None:
    """Step 1: each fold's fine-tune (OUT/fold_<f>/) and its rows' probabilities (OUT/fold_<f>/oof.npz: rows (n,),
    keys (n,), probabilities (n, C), cpu_seconds, wall_seconds); then the single model's (OUT/single.npz)."""
    key = expected_cache_key(config)
    cache = run_cache(workdir, key, table)
    pool_rows = np.nonzero((table.split != data_table.SPLIT_TEST) & cache.valid())[0]
    fold = assign_folds(table.labels, pool_rows, folds, seed)
    os.makedirs(out, exist_ok=True)
    folds_path = os.path.join(out, "folds.npy")
    if not os.path.exists(folds_path):
        with atomic_io.atomic_path(folds_path) as tmp:
            np.save(tmp, fold)
    if not np.array_equal(np.load(folds_path), fold):
        raise SystemExit(f"{out}/folds.npy holds another fold assignment (other --folds or --fold_seed).")
    for f in range(folds):
        fold_dir = os.path.join(out, f"fold_{f}")
        result = os.path.join(fold_dir, "oof.npz")
        if os.path.exists(result):
            continue
        rows = np.nonzero(fold == f)[0]
        weights = np.ones(len(table), np.float32)
        weights[rows] = 0.0
        cpu0, wall0 = _usage()
        model, metrics = finetune.train_finetune(
            table, config, fold_dir, cache_dir=frozen_cache_dir(workdir), sample_weights=weights,
            initial_weights=resolve_initial_weights(config), progress=False)
        if metrics.get("frozen_cache_key") != key:
            raise SystemExit(f"fold {f} trained from cache {metrics.get('frozen_cache_key')}, not the run's {key}.")
        probabilities = cache_probabilities(model, cache, rows, config.classifier.train_from)
        cpu1, wall1 = _usage()
        _write_npz(result, rows=rows, keys=table.keys[rows].astype(str), probabilities=probabilities,
                   cpu_seconds=cpu1 - cpu0, wall_seconds=wall1 - wall0,
                   test_accuracy=np.float64(metrics.get("test_accuracy") or np.nan),
                   best_epoch=np.int64(metrics.get("best_epoch") or 0))
        print(f"fold {f}: {len(rows)} rows, best epoch {metrics.get('best_epoch')}, test accuracy "
              f"{metrics.get('test_accuracy')}, {cpu1 - cpu0:.0f} CPU s, {wall1 - wall0:.0f} wall s", flush=True)
        keras.backend.clear_session()
    for f in range(folds):  # (e): the linear classifier cross-fitted on each fold model's features
        result = os.path.join(out, f"fold_{f}", "linear.npz")
        if not os.path.exists(result):
            model = keras.saving.load_model(os.path.join(out, f"fold_{f}", "model.keras"), compile=False)
            cpu0, wall0 = _usage()
            in_fold = fold[pool_rows] == f
            scores = linear_scores(model, cache, pool_rows, ~in_fold, in_fold, table.labels[pool_rows],
                                   config.classifier.train_from)
            cpu1, wall1 = _usage()
            rows = pool_rows[fold[pool_rows] == f]
            _write_npz(result, rows=rows, keys=table.keys[rows].astype(str), probabilities=scores,
                       cpu_seconds=cpu1 - cpu0, wall_seconds=wall1 - wall0)
            keras.backend.clear_session()
    train_singles(config, workdir, table, out, cache, pool_rows)


def train_singles(config: ml_collections.ConfigDict, workdir: str, table: data_table.LabelTable, out: str,
                  cache: block_cache.FrozenCache, pool_rows: np.ndarray) -> None:
    """The single fine-tune's in-sample probabilities (OUT/single.npz); its refit here, timed (single_refit.json);
    and the same fine-tune without early stopping (no held-apart rows, every epoch: OUT/single_all_epochs/), its
    in-sample probabilities and linear classifier scores (single_all_epochs.npz, single_all_epochs_linear.npz)."""
    single = os.path.join(out, "single.npz")
    if not os.path.exists(single):
        model = keras.saving.load_model(os.path.join(classifier_output_dir(workdir, "none"), "model.keras"),
                                        compile=False)
        probabilities = cache_probabilities(model, cache, pool_rows, config.classifier.train_from)
        _write_npz(single, rows=pool_rows, keys=table.keys[pool_rows].astype(str), probabilities=probabilities)
    variants = [("single_refit", config)] if _REFIT.value else []
    if _ALL_EPOCHS.value:
        all_epochs = ml_collections.ConfigDict(config.to_dict())
        all_epochs.classifier.holdout_fraction, all_epochs.classifier.patience = 0.0, 0
        variants.append(("single_all_epochs", all_epochs))  # patience needs held-apart rows (config validation)
    for name, variant in variants:
        if os.path.exists(os.path.join(out, f"{name}.json")):
            continue
        cpu0, wall0 = _usage()
        model, metrics = finetune.train_finetune(
            table, variant, os.path.join(out, name), cache_dir=frozen_cache_dir(workdir),
            initial_weights=resolve_initial_weights(config), progress=False)
        cpu1, wall1 = _usage()
        if name == "single_all_epochs":
            keys, everything = table.keys[pool_rows].astype(str), np.ones(len(pool_rows), bool)
            _write_npz(os.path.join(out, f"{name}.npz"), rows=pool_rows, keys=keys,
                       probabilities=cache_probabilities(model, cache, pool_rows, config.classifier.train_from))
            _write_npz(os.path.join(out, f"{name}_linear.npz"), rows=pool_rows, keys=keys, probabilities=linear_scores(
                model, cache, pool_rows, everything, everything, table.labels[pool_rows], config.classifier.train_from))
        atomic_io.write_json(os.path.join(out, f"{name}.json"), {
            "cpu_seconds": cpu1 - cpu0, "wall_seconds": wall1 - wall0, "loop_wall_seconds": metrics["seconds"],
            "best_epoch": metrics.get("best_epoch"), "epochs_trained": metrics.get("epochs_trained"),
            "test_accuracy": metrics.get("test_accuracy")})
        keras.backend.clear_session()


def load_probabilities(out: str, folds: int, table_rows: np.ndarray, keys: np.ndarray) -> dict:
    """{"single": (P, C) in-sample probabilities, "oof": (P, C) out-of-fold ones, and where saved "oof_linear": (P, C)
    the cross-fitted linear classifier's scores, "all_epochs" / "all_epochs_linear": the single fine-tune without
    early stopping's probabilities and linear classifier scores} in the order of `table_rows` (P,) (keys:
    the table's, checked against the saved ones); raises when a pool row has no prediction."""
    sources = {"single": [os.path.join(out, "single.npz")],
               "oof": [os.path.join(out, f"fold_{f}", "oof.npz") for f in range(folds)],
               "oof_linear": [os.path.join(out, f"fold_{f}", "linear.npz") for f in range(folds)],
               "all_epochs": [os.path.join(out, "single_all_epochs.npz")],
               "all_epochs_linear": [os.path.join(out, "single_all_epochs_linear.npz")]}
    result = {}
    for name, paths in sources.items():
        if name not in ("single", "oof") and not all(os.path.exists(path) for path in paths):
            continue
        parts = [np.load(path) for path in paths]
        rows = np.concatenate([p["rows"] for p in parts])
        if not np.array_equal(np.concatenate([p["keys"] for p in parts]), keys[rows].astype(str)):
            raise SystemExit(f"{out}: the {name} predictions were saved for another table.")
        position = np.full(len(keys), -1)
        position[rows] = np.arange(len(rows))
        if (position[table_rows] < 0).any():
            raise SystemExit(f"{out}: {int((position[table_rows] < 0).sum())} pool rows have no {name} prediction.")
        result[name] = np.concatenate([p["probabilities"] for p in parts])[position[table_rows]]
    return result


def detection_rows(data, correct: np.ndarray, probabilities: dict) -> list[dict]:
    """cleanlab's self-confidence and find_label_issues on each set of probabilities; the stacked score over their
    own-label probability and margin, alone and with the verify step's classifier signals (the linear classifier's
    own-label score and margin, without the refit round) on the run's features and on the same models' features
    (cross-fitted for the folds); the stacked score over each set of linear classifier signals alone.
    StackedDetector is fitted on the rows fit_verifier fits on (the verified classes' verified_train rows); the
    threshold is `evaluate`'s, chosen on the same rows as the verify step chooses it."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from cleannet_tf import ops
    from cleannet_tf.detection import signals as detection_signals
    from cleannet_tf.detection.fit import verified_rows
    from cleannet_tf.detection.stacking import StackedDetector

    evaluate = photos_realnoise.evaluate
    fit_rows, _ = verified_rows(data, None, uses_cleannet=False)

    def stacked(what: str, method: str, signals: np.ndarray, names: tuple[str, ...]) -> dict:
        detector = StackedDetector(seed=0).fit(signals[fit_rows], data.verification[fit_rows])
        return {"probabilities": what, "method": method, "signal_weights": detector.coefficients(names),
                **evaluate(data, correct, detector.score(signals))}

    x = ops.LogNormalizedRows(data.features)
    weights, bias = detection_signals.linear_classifier(x, data.labels, num_classes=len(data.class_names))
    k = _FOLDS.value
    linear = {"single": ("single fine-tune (features)", "linear classifier",
                         np.asarray(x[:], np.float64) @ weights + bias)}
    for name, what, method in (("oof", f"{k}-fold fine-tunes (features)", "cross-fitted linear classifier"),
                               ("all_epochs", "single fine-tune, no early stopping (features)", "linear classifier")):
        if f"{name}_linear" in probabilities:
            linear[name] = (what, method, probabilities.pop(f"{name}_linear"))
    linear = {name: (what, method, np.stack(ops.own_and_margin(scores, data.labels), axis=1))
              for name, (what, method, scores) in linear.items()}
    names = ("classifier_score", "classifier_margin")
    rows = [stacked(what, f"stacked ({method} score, margin; no refit)", signals, names)
            for what, method, signals in linear.values()]
    for name, p in probabilities.items():
        what = {"single": "single fine-tune, in-sample", "oof": f"{k}-fold fine-tunes, out-of-fold",
                "all_epochs": "single fine-tune, no early stopping, in-sample"}[name]
        rows.append({"probabilities": what, "method": "cleanlab self-confidence",
                     **evaluate(data, correct, get_label_quality_scores(data.labels, p))})
        rows.append({"probabilities": what, "method": "cleanlab find_label_issues",
                     **evaluate(data, correct, flagged=find_label_issues(data.labels, p))})
        own = np.stack(ops.own_and_margin(p, data.labels), axis=1)
        rows.append(stacked(what, "stacked (own probability, margin)", own, ("own_probability", "margin")))
        for pair in dict.fromkeys(("single", name)):  # beside the run's linear classifier signals, and its own
            if pair in linear:
                rows.append(stacked(what, f"stacked (own probability, margin + {linear[pair][0]}: "
                                          f"{linear[pair][1]} score, margin)",
                                    np.concatenate([own, linear[pair][2]], axis=1),
                                    ("own_probability", "margin", *names)))
    return rows


def costs(out: str, folds: int, workdir: str) -> dict:
    """CPU / wall seconds of the fold fine-tunes (each: training, test accuracy, prediction), of the cross-fitted
    linear classifiers (features of every pool row per fold model, ridge fit), and the single fine-tune's (the
    run's loop seconds, and this script's timed refit of it when present)."""
    parts = [np.load(os.path.join(out, f"fold_{f}", "oof.npz")) for f in range(folds)]
    linear = [os.path.join(out, f"fold_{f}", "linear.npz") for f in range(folds)]
    loop_seconds = [json.load(open(os.path.join(out, f"fold_{f}", "metrics.json")))["seconds"] for f in range(folds)]
    run = json.load(open(os.path.join(classifier_output_dir(workdir, "none"), "metrics.json")))
    result = {"folds": {"cpu_seconds": float(sum(p["cpu_seconds"] for p in parts)),
                        "wall_seconds": float(sum(p["wall_seconds"] for p in parts)),
                        "loop_wall_seconds": float(sum(loop_seconds)),
                        "best_epochs": [int(p["best_epoch"]) for p in parts],
                        "test_accuracy": [float(p["test_accuracy"]) for p in parts]},
              "cross-fitted linear classifiers": {key: float(sum(np.load(path)[key] for path in linear))
                                                  for key in ("cpu_seconds", "wall_seconds")}
              if all(os.path.exists(path) for path in linear) else None,
              "single (the run's)": {"loop_wall_seconds": run["seconds"], "best_epoch": run.get("best_epoch"),
                                     "test_accuracy": run.get("test_accuracy")}}
    for name, what in (("single_refit", "single (refit here)"), ("single_all_epochs", "single, no early stopping")):
        if os.path.exists(os.path.join(out, f"{name}.json")):
            result[what] = json.load(open(os.path.join(out, f"{name}.json")))
    return result


def print_report(report: dict) -> None:
    print(f"\n== {report['release']}: wrong-label detection (wrong label = positive)")
    for where, suffix in (("verified_val rows", ""), ("whole pool vs truth", " pool")):
        cols = [f"{m}{suffix} {t}" for t in ("V", "H") for m in photos_realnoise.realnoise.METRICS]
        print(f"\n{where}\n| probabilities | method | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for row in report["rows"]:
            cells = [f"{row[c]:.3f}" if c in row and np.isfinite(row[c]) else "-" for c in cols]
            print(f"| {row['probabilities']} | {row['method']} | " + " | ".join(cells) + " |")
    print("\ncosts:", json.dumps(report["costs"], indent=1))


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if not (_RUN_WORKDIR.value and photos_realnoise._RELEASE.value):
        raise SystemExit("--run_workdir and --release are required.")
    workdir = os.path.abspath(_RUN_WORKDIR.value)
    release = os.path.normpath(photos_realnoise._RELEASE.value)
    name = os.path.basename(release)
    out = os.path.join(os.path.abspath(photos_realnoise._OUT.value), name)
    config = run_config(workdir)
    table = load_table(config, workdir)
    start = time.time()
    train_folds(config, workdir, table, out, _FOLDS.value, _FOLD_SEED.value)
    print(f"folds done ({time.time() - start:.0f} s this invocation)", flush=True)
    if _TRAIN_ONLY.value:
        return
    truth = read_truth(f"{release}.truth.tsv")
    data, run_table = photos_realnoise._load_data(config, release, workdir, "")
    correct = photos_realnoise._correct(data, run_table, truth)
    probabilities = load_probabilities(out, _FOLDS.value, data.table_rows, run_table.keys)
    default = photos_realnoise.default_row(data, run_table, correct, workdir)
    default = {"probabilities": "single fine-tune (features)", "method": default["method"],
               **{k: v for k, v in default.items() if k not in ("features", "method", "seconds", "own metrics.json")}}
    report = {"release": name, "run_workdir": workdir, "folds": _FOLDS.value, "fold_seed": _FOLD_SEED.value,
              "rows": [default, *detection_rows(data, correct, probabilities)],
              "costs": costs(out, _FOLDS.value, workdir)}
    atomic_io.write_json(os.path.join(os.path.dirname(out), f"{name}.oof.json"), report)
    print_report(report)


if __name__ == "__main__":
    sys.exit(app.run(main))
