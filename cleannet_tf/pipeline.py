"""The pipeline's steps as library functions of (config, workdir), where each writes, and when one is complete.

    train_classifier (weighting none) -> WORKDIR/classifier/   (run_train_classifier)
    extract -> WORKDIR/features/                            (extract_lib.run_extract)
    refs    -> WORKDIR/references.npz                       (run_refs)
    train   -> WORKDIR/cleannet/                            (train_lib.run_train)
    verify  -> WORKDIR/verify/                              (verify_lib.run_verify)
    weighted_classifiers -> WORKDIR/classifier_<w>/         (run_train_classifier, classifier.after_verify)
    export  -> WORKDIR/saved_models/                        (export_lib.export_all)

Each step reads what the earlier ones wrote to WORKDIR. `run_step` runs one step (every step command and
cleannet-run go through it) under the workdir lock and ends by writing its DONE record,
WORKDIR/done/<record>.json: the config fields the step depends on (STEP_FIELDS) and their hash, the DONE ids of
the records it read from (its inputs), the files it produced, and the time. A step is complete only when its
record matches the current config and inputs (`staleness`); a step run again with other settings first removes
the outputs made with the old ones (an interrupted step with the same settings resumes from them instead).
WORKDIR/config.<record>.json is the config of the outputs a DONE record describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import uuid

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import (
    atomic_io,
    backbones,
    classifier_lib,
    datasets,
    distribute,
    extract_lib,
    label_noise,
    references,
    scores_io,
    train_lib,
    verify_lib,
    workdir_lock,
)
from cleannet_tf import config as config_lib
from cleannet_tf.feature_store import FeatureStore
from cleannet_tf.references import references_path


def reference_rows(table: datasets.LabelTable, valid_features: np.ndarray) -> np.ndarray:
    """(N,) bool: rows that build reference sets: the noisy pool (train and val), readable images.

    As in the paper, every image labelled c counts, noisy labels and verified
    validation images included; test images never do.
    """
    return valid_features & (table.split != datasets.SPLIT_TEST)


def run_refs(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
             progress: bool = True) -> references.ReferenceSets:
    """cleannet-refs: k-means++ reference sets of every class -> WORKDIR/references.npz."""
    table = table if table is not None else datasets.load_table(config, workdir)
    features = extract_lib.open_features(config, workdir, table)
    reference_sets = references.build_reference_sets(
        features.gather, table.labels, reference_rows(table, features.valid()), table.class_names,
        num_references=config.refs.num_references, n_init=config.refs.n_init, max_iter=config.refs.max_iter,
        tol=config.refs.tol, max_samples_per_class=config.refs.max_samples_per_class, seed=config.seed,
        core_fraction=config.refs.core_fraction,
        progress=progress)
    reference_sets.save(references_path(workdir))
    logging.info("Wrote %s: %d classes x %d references x %d dims.", references_path(workdir),
                 *reference_sets.references.shape)
    return reference_sets


def classifier_output_dir(workdir: str, weighting: str) -> str:
    """WORKDIR/classifier for the unweighted classifier (the feature extractor), classifier_<weighting> otherwise."""
    return classifier_lib.classifier_dir(workdir) + ("" if weighting == "none" else f"_{weighting}")


def run_train_classifier(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
                         strategy: tf.distribute.Strategy | None = None, progress: bool = True) -> dict:
    """cleannet-train-classifier: backbone + softmax on the noisy labels, weighted per classifier.weighting."""
    table = table if table is not None else datasets.load_table(config, workdir)
    weighting = config.classifier.weighting
    weights = None if weighting == "none" else classifier_weights(table, workdir, weighting)
    initial_weights = config.classifier.initial_weights
    if initial_weights == "auto":
        has_imagenet = backbones.BACKBONES[config.model.backbone].has_imagenet_weights
        initial_weights = "imagenet" if has_imagenet else "random"
    _, metrics = classifier_lib.train_classifier(
        table, config, classifier_output_dir(workdir, weighting), sample_weights=weights,
        initial_weights=initial_weights, strategy=strategy, progress=progress)
    return metrics


def classifier_weights(table: datasets.LabelTable, workdir: str, weighting: str) -> np.ndarray:
    """(N,) float32 weight of every table row from WORKDIR/verify/scores.tsv ("soft" or "hard").

    soft: the weight_soft column (P(label correct); paper mode max(0, s)); hard: 1[score >= threshold].
    A row's verification label wins over its score (1 -> 1, 0 -> 0); test rows get 1 (never trained on).
    Pool rows missing from scores.tsv (images without features, e.g. unreadable) get weight 1 with a warning;
    more than 1% missing is an error (a stale scores.tsv): rerun cleannet-verify.
    """
    path = os.path.join(verify_lib.verify_dir(workdir), "scores.tsv")
    metrics_path = os.path.join(verify_lib.verify_dir(workdir), "metrics.json")
    if not os.path.exists(path) or not os.path.exists(metrics_path):
        raise FileNotFoundError(f"classifier.weighting={weighting!r} needs {path} and {metrics_path}: "
                                "run cleannet-verify first.")
    scores = scores_io.read_scores_tsv(path)
    with open(metrics_path) as f:
        threshold = float(json.load(f)["threshold"])
    row_of = {key: row for row, key in enumerate(table.keys)}
    per_row = np.full(len(table), np.nan)
    unknown = [key for key in scores.keys if key not in row_of]
    if unknown:
        raise ValueError(f"{path}: {len(unknown)} keys are not in the dataset (e.g. {unknown[0]!r}); it was written "
                         "for another dataset: rerun cleannet-verify.")
    per_row[[row_of[key] for key in scores.keys]] = scores.scores
    soft = np.full(len(table), np.nan)
    soft[[row_of[key] for key in scores.keys]] = scores.weight_soft  # P(label correct); paper mode max(0, cos)
    pool = table.split != datasets.SPLIT_TEST
    missing = pool & np.isnan(per_row)
    if missing.sum() > 0.01 * pool.sum():
        raise ValueError(f"{path}: {int(missing.sum())} of {int(pool.sum())} training images have no score (e.g. "
                         f"{table.keys[np.argmax(missing)]!r}): rerun cleannet-verify.")
    if missing.any():
        logging.warning("%s: %d training images have no score (e.g. %r); they get weight 1.", path,
                        int(missing.sum()), table.keys[np.argmax(missing)])
    verification = np.where(pool, table.verification, -1)
    return label_noise.sample_weights(np.where(pool, per_row, np.nan), mode=weighting, threshold=threshold,
                                      verification=verification, probabilities=soft)



STEPS = ("train_classifier", "extract", "refs", "train", "verify", "weighted_classifiers", "export")

# The config fields each step's outputs depend on ("section.*": all of a section; "-field": but not that one).
# Left out everywhere: runtime.*, logging and checkpoint cadence, extract.batch_size, input.parallel_calls,
# data.check_images: they cannot change what a step writes.
_DATA = ("seed", "data.*", "-data.check_images")
STEP_FIELDS = {
    "train_classifier": (*_DATA, "model.backbone", "model.image_height", "model.image_width", "model.feature_dim",
                         "input.resize", "input.augment", "classifier.*", "-classifier.after_verify"),
    "extract": (*_DATA, "model.*", "input.resize", "extract.shard_size"),
    "refs": (*_DATA, "refs.*"),
    "train": (*_DATA, "cleannet.*", "loss.*", "train.*", "-train.checkpoint_every", "-train.log_every"),
    "verify": (*_DATA, "cleannet.mode", "cleannet.calibration_fraction", "verify.*"),
    "weighted_classifiers": ("classifier.after_verify",),
    "export": (*_DATA, "model.*", "input.resize", "classifier.after_verify"),
}
VERIFY_OUTPUTS = ("scores.tsv", "metrics.json", "verifier.keras", "to_verify.tsv", "report.html")


def export_dir(workdir: str) -> str:
    """Where cleannet-run and cleannet-demo export: WORKDIR/saved_models."""
    return os.path.join(workdir, "saved_models")


def weighted_classifiers(config: ml_collections.ConfigDict) -> list[str]:
    """The weightings of classifier.after_verify ("soft,hard" -> ["soft", "hard"])."""
    return list(config_lib.split_names(config.classifier.after_verify))


def _with_weighting(config: ml_collections.ConfigDict, weighting: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.classifier.weighting = weighting
    return config


# --------------------------------------------------------------------------- DONE records

def done_dir(workdir: str) -> str:
    """WORKDIR/done: one DONE record per finished step (its absence marks a workdir of an older version)."""
    return os.path.join(workdir, "done")


def _record_path(workdir: str, name: str, *, started: bool = False) -> str:
    return os.path.join(done_dir(workdir), f"{name}.started.json" if started else f"{name}.json")


def record_name(step: str, config: ml_collections.ConfigDict) -> str:
    """The DONE record of `step` under `config`: train_classifier_<w> for a weighted classifier, else `step`."""
    if step == "train_classifier" and config.classifier.weighting != "none":
        return f"train_classifier_{config.classifier.weighting}"
    return step


def _step_of(name: str) -> str:
    return "train_classifier" if name.startswith("train_classifier") else name


def _record_config(name: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config record `name` is made with (a classifier record fixes classifier.weighting)."""
    if _step_of(name) != "train_classifier":
        return config
    weighting = name[len("train_classifier_"):] or "none"
    return config if config.classifier.weighting == weighting else _with_weighting(config, weighting)


def read_record(workdir: str, name: str, *, started: bool = False) -> dict | None:
    """WORKDIR/done/<name>.json (or .started.json), or None."""
    try:
        with open(_record_path(workdir, name, started=started)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _skip_reason(step: str, config: ml_collections.ConfigDict) -> str | None:
    """Why cleannet-run does not run `step` under `config`, or None."""
    if step == "extract" and config.data.features:
        return "skipped: precomputed features (data.features)"
    if step == "export" and config.data.features:  # the classifiers (softmax heads) take features, not images
        return "skipped: precomputed features (data.features): the models take features, not images"
    if step == "weighted_classifiers" and not weighted_classifiers(config):
        return "skipped: classifier.after_verify is empty"
    return None


def _upstream(name: str, config: ml_collections.ConfigDict) -> list[str]:
    """The records whose outputs record `name` reads."""
    features = [] if config.data.features else ["extract"]
    if name == "train_classifier":
        return []
    if name.startswith("train_classifier_"):  # weighted by verify's scores
        return ["verify"]
    if name == "extract":
        return ["train_classifier"] if config.model.weights == "classifier" else []
    if name == "refs":
        return features
    if name == "train":
        return ["refs", *features]
    if name == "verify":
        return ["train", "refs", *features]
    if name == "weighted_classifiers":
        return [f"train_classifier_{weighting}" for weighting in weighted_classifiers(config)]
    if name == "export":
        weighted = ["weighted_classifiers"] if _skip_reason("weighted_classifiers", config) is None else []
        return ["verify", "train_classifier", *weighted, *features]
    raise ValueError(f"Unknown step {name!r}; expected one of {STEPS}")


def _expected(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """What record `name` must say to describe outputs of `config`: its fields, their hash, its inputs' ids."""
    config = _record_config(name, config)
    fields = config_lib.select_fields(config, STEP_FIELDS[_step_of(name)])
    inputs = {}
    for upstream in _upstream(name, config):
        record = read_record(workdir, upstream)
        inputs[upstream] = record["id"] if record else None
    return {"step": name, "config_hash": config_lib.hash_fields(fields), "config": fields, "inputs": inputs}


def _changes(old: dict, new: dict, *, limit: int = 6) -> list[str]:
    """["train.steps 3000 -> 600", ...]: the fields whose values differ."""
    changed = [f"{field} {old.get(field, '(unset)')!r} -> {new.get(field, '(unset)')!r}"
               for field in sorted(set(old) | set(new)) if old.get(field) != new.get(field)]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _mismatch(record: dict, expected: dict) -> str | None:
    """Why `record` does not describe the outputs `expected` wants, or None when it does."""
    if record["config_hash"] != expected["config_hash"]:
        return "config changed: " + ", ".join(_changes(record.get("config", {}), expected["config"]))
    for upstream, wanted in expected["inputs"].items():
        if record.get("inputs", {}).get(upstream) != wanted:
            return f"its input {upstream} was rerun since"
    if set(record.get("inputs", {})) != set(expected["inputs"]):
        return "its inputs changed (" + ", ".join(sorted(set(record.get("inputs", {})) ^ set(expected["inputs"]))) + ")"
    return None


def staleness(name: str, config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """None when record `name` says its outputs are those of `config` and of complete inputs; else why not.

    Workdirs of older versions (no WORKDIR/done/) fall back to _legacy_complete.
    """
    record = read_record(workdir, name)
    if record is None:
        if not os.path.isdir(done_dir(workdir)) and _legacy_complete(name, config, workdir):
            return None
        started = read_record(workdir, name, started=True)
        return f"interrupted (started {started.get('started', '?')}, no DONE record)" if started else "not run yet"
    reason = _mismatch(record, _expected(name, config, workdir))
    if reason:
        return reason
    for upstream in record.get("inputs", {}):
        upstream_reason = staleness(upstream, config, workdir)
        if upstream_reason:
            return f"its input {upstream} is not complete ({upstream_reason})"
    return None


def step_complete(step: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether `step`'s outputs in `workdir` are complete for `config` (cleannet-run skips those).

    Trusts only the step's DONE record (and, for a workdir of an older version with none, its old outputs).
    A step cleannet-run skips under `config` (precomputed features, no weighted classifiers) counts as complete.
    """
    if _skip_reason(step, config) and step != "train_classifier":
        return True
    return staleness(record_name(step, config), config, workdir) is None


def _legacy_complete(name: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """For workdirs written before DONE records: the step's old outputs exist and training reached its end."""
    config = _record_config(name, config)
    if name == "extract":
        try:
            return FeatureStore(extract_lib.features_dir(workdir)).complete
        except FileNotFoundError:
            return False
    if name == "refs":
        return os.path.exists(references_path(workdir))
    if name.startswith("train_classifier"):
        return os.path.exists(os.path.join(classifier_output_dir(workdir, config.classifier.weighting), "metrics.json"))
    if name == "weighted_classifiers":
        return all(_legacy_complete(upstream, config, workdir) for upstream in _upstream(name, config))
    if name == "train":
        directory = train_lib.cleannet_dir(workdir)
        last = tf.train.latest_checkpoint(os.path.join(directory, "checkpoints"))
        return (os.path.exists(os.path.join(directory, "model.keras"))
                and os.path.exists(os.path.join(directory, "metrics.json"))
                and last is not None and int(last.rsplit("-", 1)[1]) >= config.train.steps)
    if name == "verify":
        return all(os.path.exists(os.path.join(verify_lib.verify_dir(workdir), output)) for output in VERIFY_OUTPUTS)
    if name == "export":
        return os.path.exists(os.path.join(export_dir(workdir), "models.config"))
    raise ValueError(f"Unknown step {name!r}; expected one of {STEPS}")


def _record_names(step: str, config: ml_collections.ConfigDict) -> list[str]:
    if step == "weighted_classifiers":
        return [*_upstream("weighted_classifiers", config), "weighted_classifiers"]
    return [record_name(step, _with_weighting(config, "none") if step == "train_classifier" else config)]


def adopt_legacy(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """A workdir of an older version (no WORKDIR/done/): DONE records for its leading complete steps.

    Steps count as complete as _legacy_complete says, in pipeline order up to the first that is not; the
    records say "legacy": true. Then WORKDIR/done/ exists and only records count. Returns the records written.
    """
    if os.path.isdir(done_dir(workdir)):
        return []
    complete = []
    for step in STEPS:
        if _skip_reason(step, config):
            continue
        names = _record_names(step, config)
        if not all(_legacy_complete(name, config, workdir) for name in names):
            break
        complete += names
    os.makedirs(done_dir(workdir), exist_ok=True)
    for name in complete:
        _write_record(name, config, workdir, outputs=[], legacy=True)
    adopted = complete
    if adopted:
        logging.info("%s has no DONE records (an older version wrote it); its complete steps count as done: %s.",
                     workdir, ", ".join(adopted))
    return adopted


def _clear_paths(name: str, workdir: str) -> list[str]:
    """What a rerun of record `name` with other settings removes first (resuming from it would mix settings).

    verify and export keep theirs: verify replaces its folder whole, each export adds versions.
    """
    if name.startswith("train_classifier"):
        return [classifier_lib.classifier_dir(workdir) + name[len("train_classifier"):]]
    return {"extract": [extract_lib.features_dir(workdir)], "refs": [references_path(workdir)],
            "train": [train_lib.cleannet_dir(workdir)]}.get(name, [])


def _begin(name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before record `name`'s step runs: outputs of other settings removed, a started record, no DONE record."""
    expected = _expected(name, config, workdir)
    prior = read_record(workdir, name, started=True) or read_record(workdir, name)
    reason = _mismatch(prior, expected) if prior else None
    if reason:
        for path in _clear_paths(name, workdir):
            if os.path.lexists(path):
                logging.info("%s: %s; removing %s (made with the old settings).", name, reason, path)
                atomic_io.remove_path(path)
    os.makedirs(done_dir(workdir), exist_ok=True)
    atomic_io.write_json(_record_path(workdir, name, started=True),
                         {**expected, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    if os.path.exists(_record_path(workdir, name)):
        os.remove(_record_path(workdir, name))


def _write_record(name: str, config: ml_collections.ConfigDict, workdir: str, *, outputs: list[str],
                  legacy: bool = False) -> dict:
    record = {**_expected(name, config, workdir), "id": uuid.uuid4().hex,
              "outputs": sorted(os.path.relpath(path, workdir) for path in outputs),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}
    if legacy:
        record["legacy"] = True
    atomic_io.write_json(_record_path(workdir, name), record)
    return record


def _finish(name: str, config: ml_collections.ConfigDict, workdir: str, outputs: list[str]) -> None:
    """The step's last act: WORKDIR/config.<name>.json, then its DONE record (then the started record goes)."""
    config_lib.save_config(_record_config(name, config), os.path.join(workdir, f"config.{name}.json"))
    _write_record(name, config, workdir, outputs=outputs)
    started = _record_path(workdir, name, started=True)
    if os.path.exists(started):
        os.remove(started)


def _files_under(*paths: str) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += [os.path.join(directory, name) for directory, _, names in os.walk(path) for name in names]
        elif os.path.exists(path):
            files.append(path)
    return files


# --------------------------------------------------------------------------- running steps

def command_line(command: str) -> str:
    """"cleannet-run --config=... --workdir=..." for the lock file: the command and this process's flags."""
    return " ".join([f"cleannet-{command.replace('_', '-')}", *sys.argv[1:]])[:500]


def _is_chief_process(config: ml_collections.ConfigDict) -> bool:
    """False on the non-chief workers of a multi_worker run (TF_CONFIG), which write nothing to WORKDIR."""
    if config.runtime.strategy != "multi_worker" or not os.environ.get("TF_CONFIG"):
        return True
    tf_config = json.loads(os.environ["TF_CONFIG"])
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0


def start_command(config: ml_collections.ConfigDict, workdir: str, command: str, *, lock: bool = True) -> None:
    """A command's start: takes the workdir lock for the whole process (cleaning temp litter of killed runs).

    cleannet-run, cleannet-demo and cleannet-export also write WORKDIR/config.<command>.json now; the other step
    commands go through run_step, which writes config.<step>.json when the step finishes (so it describes the
    outputs).
    Raises:
        workdir_lock.WorkdirBusyError: another process holds the lock (the message names it).
    """
    if lock and _is_chief_process(config):
        workdir_lock.acquire(workdir, command_line(command))
    else:
        os.makedirs(workdir, exist_ok=True)
    if command not in STEPS or command == "export":
        config_lib.save_config(config, os.path.join(workdir, f"config.{command}.json"))


def run_step(step: str, config: ml_collections.ConfigDict, workdir: str, *,
             table: datasets.LabelTable | None = None, strategy: tf.distribute.Strategy | None = None,
             export_to: str | None = None, extract_task: tuple[int, int] = (0, 1)) -> str:
    """Runs one step under the workdir lock and records it; returns one line saying what it did.

    extract_task: (task index, number of tasks) of a multi-host extraction worker; with more than one task the
    workers share WORKDIR, so none takes the lock or writes the DONE record (the next run records the step).

    train_classifier trains the classifier of config.classifier.weighting. An interrupted step resumes from its
    outputs; one whose last run had other settings starts over. export_to: cleannet-export's --export_dir
    (a folder other than WORKDIR/saved_models gets no DONE record).
    """
    if step not in STEPS:
        raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")
    chief = (strategy is None or distribute.is_chief(strategy)) and not (step == "extract" and extract_task[1] > 1)
    with workdir_lock.locked(workdir, command_line(step)) if chief else contextlib.nullcontext():
        recorded = chief and not (step == "extract" and config.data.features) and (
            step != "export" or export_to is None or os.path.abspath(export_to) == os.path.abspath(export_dir(workdir)))
        if recorded:
            adopt_legacy(config, workdir)
        if step == "weighted_classifiers":
            return _run_weighted_classifiers(config, workdir, table=table, strategy=strategy, recorded=recorded)
        name = record_name(step, config)
        if recorded:
            _begin(name, config, workdir)
        status, outputs = _run(step, config, workdir, table=table, strategy=strategy,
                               export_to=export_to or export_dir(workdir), extract_task=extract_task)
        if recorded:
            _finish(name, config, workdir, outputs)
        return status


def _run(step: str, config: ml_collections.ConfigDict, workdir: str, *, table, strategy,
         export_to: str, extract_task: tuple[int, int] = (0, 1)) -> tuple[str, list[str]]:
    """Runs the step's library function: (status line, the files it produced)."""
    if step == "train_classifier":
        result = run_train_classifier(config, workdir, table=table, strategy=strategy)
        accuracy = result["test_accuracy"]
        return (f"{result['epochs']} epochs on the noisy labels, test accuracy " +
                (f"{accuracy:.3f}" if accuracy is not None else "n/a (no test split)"),
                _files_under(classifier_output_dir(workdir, config.classifier.weighting)))
    if step == "extract":
        task_index, num_tasks = extract_task
        stats = extract_lib.run_extract(config, workdir, table=table, strategy=strategy, task_index=task_index,
                                        num_tasks=num_tasks)
        if config.data.features:
            return "skipped: precomputed features (data.features)", []
        return (f"{stats['images']} images, {stats['images_per_second']:.0f} images/s",
                _files_under(extract_lib.features_dir(workdir)))
    if step == "refs":
        reference_sets = run_refs(config, workdir, table=table)
        return ("{} classes x {} references x {} dims".format(*reference_sets.references.shape),
                [references_path(workdir)])
    if step == "train":
        result = train_lib.run_train(config, workdir, table=table, strategy=strategy)
        return (f"{result['steps']} steps, best at {result['best_step']}, "
                f"{result['samples_per_second']:.0f} samples/s", _files_under(train_lib.cleannet_dir(workdir)))
    if step == "verify":
        result = verify_lib.run_verify(config, workdir, table=table)
        return (f"threshold {result['threshold']:.3f}, {result['n_flagged']} of {result['n_images']} images flagged",
                _files_under(verify_lib.verify_dir(workdir)))
    if step == "export":
        from cleannet_tf import export_lib  # TF Serving protos only when exporting

        result = export_lib.export_all(config, workdir, export_to, table=table)
        return (f"{result['verifier']}, {result['classifier']}",
                _files_under(result["verifier"], result["classifier"], result["models_config"]))
    raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")


def _run_weighted_classifiers(config, workdir, *, table, strategy, recorded: bool) -> str:
    """Each classifier of classifier.after_verify not yet complete (each with its own record), then the step's."""
    if recorded:
        _begin("weighted_classifiers", config, workdir)
    accuracies, outputs = [], []
    for weighting in weighted_classifiers(config):
        weighted = _with_weighting(config, weighting)
        name = record_name("train_classifier", weighted)
        reason = staleness(name, weighted, workdir) if recorded else "not recorded"
        if reason:
            logging.info("%s: %s; training it.", name, reason)
            if recorded:
                _begin(name, weighted, workdir)
            _, produced = _run("train_classifier", weighted, workdir, table=table, strategy=strategy, export_to="")
            if recorded:
                _finish(name, weighted, workdir, produced)
        directory = classifier_output_dir(workdir, weighting)
        outputs += _files_under(directory)
        with open(os.path.join(directory, "metrics.json")) as f:
            accuracy = json.load(f)["test_accuracy"]
        accuracies.append(f"{weighting} {accuracy:.3f}" if accuracy is not None else f"{weighting} n/a")
    if recorded:
        _finish("weighted_classifiers", config, workdir, outputs)
    return "test accuracy " + ", ".join(accuracies)


def run_steps(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
              strategy: tf.distribute.Strategy | None = None, steps=STEPS) -> dict[str, str]:
    """cleannet-run: runs `steps` in order under the workdir lock, skipping those complete for `config`.

    A step runs again when its DONE record is missing (never run, or interrupted: it resumes) or describes
    other settings or inputs (it starts over, and so do the steps after it, whose inputs it replaces).
    Returns:
        step -> one line saying what it did ("already complete" when skipped).
    """
    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"Unknown step {unknown[0]!r}; expected one of {STEPS}")
    done = {}
    with workdir_lock.locked(workdir, command_line("run")):
        adopt_legacy(config, workdir)
        table = table if table is not None else datasets.load_table(config, workdir)
        for step in steps:
            # The first classifier makes the features: unweighted, whatever classifier.weighting says.
            step_config = _with_weighting(config, "none") if step == "train_classifier" else config
            reason = _skip_reason(step, config)
            stale = None if reason else staleness(record_name(step, step_config), step_config, workdir)
            if reason:
                done[step] = reason
            elif stale is None:
                done[step] = "already complete"
            else:
                logging.info("%s: %s; running it.", step, stale)
                done[step] = run_step(step, step_config, workdir, table=table, strategy=strategy)
                if stale != "not run yet":
                    done[step] += f" (ran again: {stale})"
            logging.info("%s: %s", step, done[step])
    return done
