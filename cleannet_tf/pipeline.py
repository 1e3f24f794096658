"""The pipeline's steps as library functions of (config, workdir), and where each writes.

    train_classifier (weighting none) -> WORKDIR/classifier/   (run_train_classifier)
    extract -> WORKDIR/features/                            (extract_lib.run_extract)
    refs    -> WORKDIR/references.npz                       (run_refs)
    train   -> WORKDIR/cleannet/                            (train_lib.run_train)
    verify  -> WORKDIR/verify/                              (verify_lib.run_verify)

Each step reads what the earlier ones wrote to WORKDIR.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import (
    backbones,
    classifier_lib,
    datasets,
    extract_lib,
    label_noise,
    references,
    scores_io,
    train_lib,
    verify_lib,
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
                                      verification=verification)


def step_complete(step: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether `step`'s outputs in `workdir` are complete (cleannet-run skips those)."""
    if step == "extract":
        if config.data.features:
            return True
        try:
            return FeatureStore(extract_lib.features_dir(workdir)).complete
        except FileNotFoundError:
            return False
    if step == "refs":
        return os.path.exists(references_path(workdir))
    if step == "train_classifier":
        return os.path.exists(os.path.join(classifier_output_dir(workdir, config.classifier.weighting), "metrics.json"))
    if step == "weighted_classifiers":
        return all(os.path.exists(os.path.join(classifier_output_dir(workdir, weighting), "metrics.json"))
                   for weighting in weighted_classifiers(config))
    if step == "train":
        return os.path.exists(os.path.join(train_lib.cleannet_dir(workdir), "model.keras")) and os.path.exists(
            os.path.join(train_lib.cleannet_dir(workdir), "metrics.json"))
    if step == "export":
        return os.path.exists(os.path.join(export_dir(workdir), "models.config"))
    if step == "verify":
        return all(os.path.exists(os.path.join(verify_lib.verify_dir(workdir), name))
                   for name in ("metrics.json", "scores.tsv", "verifier.keras"))
    raise ValueError(f"Unknown step {step!r}")


STEPS = ("train_classifier", "extract", "refs", "train", "verify", "weighted_classifiers", "export")


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


def run_steps(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
              strategy: tf.distribute.Strategy | None = None, steps=STEPS) -> dict[str, str]:
    """cleannet-run: runs `steps` in order, skipping those whose outputs are complete.

    Returns:
        step -> one line saying what it did ("already complete" when skipped).
    """
    table = table if table is not None else datasets.load_table(config, workdir)
    done = {}
    first_config = config
    if config.classifier.weighting != "none":  # the first classifier extracts features: unweighted
        first_config = _with_weighting(config, "none")
    for step in steps:
        if step in ("train_classifier", "extract", "weighted_classifiers", "export") and config.data.features:
            done[step] = "skipped: precomputed features (data.features)"
        elif step == "weighted_classifiers" and not weighted_classifiers(config):
            done[step] = "skipped: classifier.after_verify is empty"
        elif step_complete(step, first_config if step == "train_classifier" else config, workdir):
            done[step] = "already complete"
        elif step == "train_classifier":
            result = run_train_classifier(first_config, workdir, table=table, strategy=strategy)
            accuracy = result["test_accuracy"]
            done[step] = f"{result['epochs']} epochs on the noisy labels, test accuracy " + (
                f"{accuracy:.3f}" if accuracy is not None else "n/a (no test split)")
        elif step == "extract":
            stats = extract_lib.run_extract(config, workdir, table=table, strategy=strategy)
            done[step] = f"{stats['images']} images, {stats['images_per_second']:.0f} images/s"
        elif step == "refs":
            reference_sets = run_refs(config, workdir, table=table)
            done[step] = "{} classes x {} references x {} dims".format(*reference_sets.references.shape)
        elif step == "train":
            result = train_lib.run_train(config, workdir, table=table, strategy=strategy)
            done[step] = (f"{result['steps']} steps, best at {result['best_step']}, "
                          f"{result['samples_per_second']:.0f} samples/s")
        elif step == "verify":
            result = verify_lib.run_verify(config, workdir, table=table)
            done[step] = (f"threshold {result['threshold']:.3f}, {result['n_flagged']} of {result['n_images']} "
                          "images flagged")
        elif step == "weighted_classifiers":
            accuracies = []
            for weighting in weighted_classifiers(config):
                weighted = _with_weighting(config, weighting)
                if not step_complete("train_classifier", weighted, workdir):
                    run_train_classifier(weighted, workdir, table=table, strategy=strategy)
                with open(os.path.join(classifier_output_dir(workdir, weighting), "metrics.json")) as f:
                    accuracy = json.load(f)["test_accuracy"]
                accuracies.append(f"{weighting} {accuracy:.3f}" if accuracy is not None else f"{weighting} n/a")
            done[step] = "test accuracy " + ", ".join(accuracies)
        elif step == "export":
            from cleannet_tf import export_lib  # TF Serving protos only when exporting

            result = export_lib.export_all(config, workdir, export_dir(workdir), table=table)
            done[step] = f"{result['verifier']}, {result['classifier']}"
        else:
            raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")
        logging.info("%s: %s", step, done[step])
    return done
