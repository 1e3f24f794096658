"""The pipeline's steps as library functions of (config, workdir), and where each writes.

    train_classifier (weighting none) -> WORKDIR/classifier/   (run_train_classifier)
    extract -> WORKDIR/features/                            (extract_lib.run_extract)
    refs    -> WORKDIR/references.npz                       (run_refs)
    train   -> WORKDIR/cleannet/                            (train_lib.run_train)
    verify  -> WORKDIR/verify/                              (verify_lib.run_verify)

Each step reads what the earlier ones wrote to WORKDIR.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import backbones, classifier_lib, datasets, extract_lib, references, train_lib, verify_lib
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
    if weighting != "none":
        raise NotImplementedError(f"classifier.weighting={weighting!r} needs CleanNet scores (cleannet-verify), "
                                  "which this version does not write yet; use weighting=none.")
    initial_weights = config.classifier.initial_weights
    if initial_weights == "auto":
        has_imagenet = backbones.BACKBONES[config.model.backbone].has_imagenet_weights
        initial_weights = "imagenet" if has_imagenet else "random"
    _, metrics = classifier_lib.train_classifier(
        table, config, classifier_output_dir(workdir, weighting), initial_weights=initial_weights,
        strategy=strategy, progress=progress)
    return metrics


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
    if step == "train":
        return os.path.exists(os.path.join(train_lib.cleannet_dir(workdir), "model.keras")) and os.path.exists(
            os.path.join(train_lib.cleannet_dir(workdir), "metrics.json"))
    if step == "verify":
        return all(os.path.exists(os.path.join(verify_lib.verify_dir(workdir), name))
                   for name in ("metrics.json", "scores.tsv", "verifier.keras"))
    raise ValueError(f"Unknown step {step!r}")


STEPS = ("train_classifier", "extract", "refs", "train", "verify")


def run_steps(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
              strategy: tf.distribute.Strategy | None = None, steps=STEPS) -> dict[str, str]:
    """cleannet-run: runs `steps` in order, skipping those whose outputs are complete.

    Returns:
        step -> one line saying what it did ("already complete" when skipped).
    """
    table = table if table is not None else datasets.load_table(config, workdir)
    done = {}
    for step in steps:
        if step in ("train_classifier", "extract") and config.data.features:
            done[step] = "skipped: precomputed features (data.features)"
        elif step_complete(step, config, workdir):
            done[step] = "already complete"
        elif step == "train_classifier":
            result = run_train_classifier(config, workdir, table=table, strategy=strategy)
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
        else:
            raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")
        logging.info("%s: %s", step, done[step])
    return done
