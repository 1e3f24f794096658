"""cleannet-train-classifier: the image classifier on the noisy labels (the feature extractor), and the classifiers
weighted by cleannet-verify's scores -> WORKDIR/classifier[_<weighting>]/.

Imports `config`, `data`, `detection`, `training`.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf.data import table as datasets
from cleannet_tf.detection import label_noise, scores_tsv
from cleannet_tf.features import backbones
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import (
    classifier_output_dir,
    frozen_cache_dir,
    verify_dir,
)
from cleannet_tf.training import classifier, finetune


def run_train_classifier(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
                         strategy: tf.distribute.Strategy | None = None, progress: bool = True) -> dict:
    """cleannet-train-classifier: backbone + softmax on the noisy labels, weighted per classifier.weighting."""
    table = table if table is not None else load_table(config, workdir)
    weighting = config.classifier.weighting
    weights = None if weighting == "none" else classifier_weights(table, workdir, weighting)
    initial_weights = config.classifier.initial_weights
    if initial_weights == "auto":
        has_imagenet = backbones.BACKBONES[config.model.backbone].has_imagenet_weights
        initial_weights = "imagenet" if has_imagenet else "random"
    if finetune.uses_finetune(config):  # from a block on, held-apart rows or mixed precision
        _, metrics = finetune.train_finetune(
            table, config, classifier_output_dir(workdir, weighting), cache_dir=frozen_cache_dir(workdir),
            sample_weights=weights, initial_weights=initial_weights, strategy=strategy, progress=progress)
        return metrics
    _, metrics = classifier.train_classifier(
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
