"""Loaders of what the steps wrote to WORKDIR: every step module reads the earlier steps' outputs through these,
so no step module imports another.

    open_features          WORKDIR/features/ (or data.features)      extract
    load_training_inputs   + WORKDIR/references.npz: TrainingData    refs
    load_verifier          WORKDIR/verify/verifier.keras             verify
    classifier_weights     WORKDIR/verify/scores.tsv as weights      verify
    classifier_path        WORKDIR/classifier[_<w>]/model.keras      train_classifier
    build_config_backbone  the backbone of config.model (model.weights=classifier: WORKDIR/classifier)

Imports `data`, `detection`, `features`, `training`, `pipeline.table`, `pipeline.scores_tsv`, `pipeline.workdir`.
"""

from __future__ import annotations

import json
import os

import keras
import ml_collections
import numpy as np
from absl import logging

from cleannet_tf.data import table as data_table
from cleannet_tf.data.features_npz import load_precomputed_features
from cleannet_tf.detection import label_noise, verifier
from cleannet_tf.features import backbones
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.features.store import ArrayFeatures, FeatureSource, FeatureStore
from cleannet_tf.pipeline import records, scores_tsv
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import (
    classifier_output_dir,
    features_dir,
    references_path,
    verifier_path,
    verify_dir,
)
from cleannet_tf.training import pool
from cleannet_tf.training.cleannet import calibration_classes, log_calibration_classes


def resolve_weights(config: ml_collections.ConfigDict, workdir: str) -> str:
    """model.weights with "classifier" replaced by WORKDIR/classifier/model.keras."""
    if config.model.weights == "classifier":
        return os.path.join(workdir, "classifier", "model.keras")
    return config.model.weights


def build_config_backbone(config: ml_collections.ConfigDict, workdir: str) -> keras.Model:
    """The backbone named by config.model (weights resolved against `workdir`)."""
    return backbones.build_backbone(
        config.model.backbone, image_size=(config.model.image_height, config.model.image_width),
        weights=resolve_weights(config, workdir), feature_dim=config.model.feature_dim)


def open_features(config: ml_collections.ConfigDict, workdir: str, table: data_table.LabelTable) -> FeatureSource:
    """The features of `table`: data.features if given, else the finished WORKDIR/features/ store."""
    if config.data.features:
        return ArrayFeatures(*load_precomputed_features(config.data.features, table))
    store = FeatureStore(features_dir(workdir))
    if store.num_rows != len(table) or not np.array_equal(store.keys(), table.keys):
        raise ValueError(f"{store.directory} holds features of another table ({store.num_rows} rows, "
                         f"now {len(table)}): run cleannet-extract with this config, or use another --workdir.")
    return store


def load_training_inputs(config: ml_collections.ConfigDict, workdir: str,
                         table: data_table.LabelTable | None = None, *,
                         for_training: bool = False) -> tuple[pool.TrainingData, ReferenceSets]:
    """The table, features and reference sets the earlier steps wrote, checked.

    for_training: the calibration classes (cleannet.calibration_fraction) lose their verified train rows and
    count as held out, as CleanNet must not see them.
    """
    table = table if table is not None else load_table(config, workdir)
    if for_training and config.cleannet.calibration_fraction > 0:
        calibration = calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
        log_calibration_classes(table.class_names, calibration, config.cleannet.calibration_fraction)
        table = data_table.apply_heldout(table, calibration, reason=data_table.CALIBRATION_SKIP_REASON)
    features = open_features(config, workdir, table)
    reference_sets = ReferenceSets.load(references_path(workdir))
    data = pool.prepare_training_data(table, features, reference_sets.class_names,
                                            reference_sets.references.shape[2], reference_sets.counts)
    return data, reference_sets


def load_verifier(workdir: str) -> tuple[keras.Model, list[str], float]:
    """(verifier model, class names, threshold) that cleannet-verify wrote to WORKDIR/verify/."""
    path = verifier_path(workdir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run cleannet-verify first.")
    model = keras.saving.load_model(path)
    head = verifier.verification_head_of(model)
    class_names = ReferenceSets.load(os.path.join(workdir, "references.npz")).class_names
    return model, list(class_names), head.threshold


def classifier_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The weighted classifier cleannet-run trained last (classifier.after_verify), else the unweighted one."""
    for weighting in [*records.weighted_classifiers(config), "none"]:
        path = os.path.join(classifier_output_dir(workdir, weighting), "model.keras")
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"No classifier in {workdir}: run cleannet-train-classifier first.")


def classifier_weights(table: data_table.LabelTable, workdir: str, weighting: str) -> np.ndarray:
    """(N,) float32 weight of every table row from WORKDIR/verify/scores.tsv ("soft" or "hard").

    soft: the weight_soft column (P(label correct); paper mode max(0, s)); hard: 1[score >= threshold].
    A row's verification label wins over its score (1 -> 1, 0 -> 0); test rows get 1 (never trained on).
    Pool rows missing from scores.tsv (images without features, e.g. unreadable) get weight 1 with a warning;
    more than 1% missing is an error (a stale scores.tsv): rerun cleannet-verify.
    """
    path = os.path.join(verify_dir(workdir), "scores.tsv")
    metrics_path = os.path.join(verify_dir(workdir), "metrics.json")
    if not os.path.exists(path) or not os.path.exists(metrics_path):
        raise FileNotFoundError(f"classifier.weighting={weighting!r} needs {path} and {metrics_path}: "
                                "run cleannet-verify first.")
    scores = scores_tsv.read_scores_tsv(path)
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
    pool = table.split != data_table.SPLIT_TEST
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
