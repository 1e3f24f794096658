"""cleannet-train-classifier: the image classifier on the noisy labels (the feature extractor), and the classifiers
weighted by cleannet-verify's scores -> WORKDIR/classifier[_<weighting>]/.

Imports `data`, `training`, `pipeline.artifacts`, `pipeline.frozen_cache`.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline.artifacts import classifier_weights
from cleannet_tf.pipeline.frozen_cache import expected_cache_key, prune_frozen_caches, resolve_initial_weights
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import (
    classifier_output_dir,
    frozen_cache_dir,
)
from cleannet_tf.training import classifier, finetune


def run_train_classifier(config: ml_collections.ConfigDict, workdir: str, *, table: data_table.LabelTable | None = None,
                         strategy: tf.distribute.Strategy | None = None, progress: bool = True) -> dict:
    """cleannet-train-classifier: backbone + softmax on the noisy labels, weighted per classifier.weighting."""
    table = table if table is not None else load_table(config, workdir)
    weighting = config.classifier.weighting
    weights = None if weighting == "none" else classifier_weights(table, workdir, weighting)
    initial_weights = resolve_initial_weights(config)
    if weighting == "none":  # the cache's owner: caches of other settings go (the weighted ones share its key)
        prune_frozen_caches(workdir, expected_cache_key(config))
    if finetune.uses_finetune(config):  # from a block on, held-apart rows or mixed precision
        _, metrics = finetune.train_finetune(
            table, config, classifier_output_dir(workdir, weighting), cache_dir=frozen_cache_dir(workdir),
            sample_weights=weights, initial_weights=initial_weights, strategy=strategy, progress=progress)
        return metrics
    _, metrics = classifier.train_classifier(
        table, config, classifier_output_dir(workdir, weighting), sample_weights=weights,
        initial_weights=initial_weights, strategy=strategy, progress=progress)
    return metrics


