"""cleannet-extract: the backbone config.model names, run over every table image into WORKDIR/features/.

With model.weights=classifier and the fine-tuned classifier's frozen cache in place (pipeline/frozen_cache.py), only
its trained part runs, on the cached frozen outputs; else the whole backbone runs on the images.
Its output is read through pipeline/artifacts.py (open_features). Imports `data`, `features`, `pipeline.artifacts`,
`pipeline.frozen_cache`.
"""

from __future__ import annotations

import os

import keras
import ml_collections
import tensorflow as tf
from absl import logging

from cleannet_tf.data import table as data_table
from cleannet_tf.features import backbones, block_cache
from cleannet_tf.features.extract import extract_features
from cleannet_tf.features.store import FeatureStore
from cleannet_tf.pipeline import frozen_cache
from cleannet_tf.pipeline.artifacts import build_config_backbone, resolve_weights
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import features_dir


def extractor_settings(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """What determines the features; a store made with other settings is not reused."""
    weights = resolve_weights(config, workdir)
    weights_id = weights
    if os.path.exists(weights):
        weights_id = f"{os.path.abspath(weights)}@{os.path.getmtime(weights):.0f}"
    return {"backbone": config.model.backbone, "weights": weights_id, "feature_dim": config.model.feature_dim,
            "image_size": [config.model.image_height, config.model.image_width], "resize": config.input.resize}


def run_extract(config: ml_collections.ConfigDict, workdir: str, *, table: data_table.LabelTable | None = None,
                strategy: tf.distribute.Strategy | None = None, progress: bool = True, task_index: int = 0,
                num_tasks: int = 1) -> dict:
    """cleannet-extract: features of every table image into WORKDIR/features/.

    Worker `task_index` of `num_tasks` extracts only its block of shards (`FeatureStore.task_shards`); when
    every shard is then present, it checks the store and writes its completion record (stats["finalized"]).
    Skipped when config.data.features names a precomputed .npz.
    """
    if config.data.features:
        logging.info("data.features is set (%s): extraction skipped.", config.data.features)
        return {"skipped": True}
    table = table if table is not None else load_table(config, workdir)
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.seed)  # random-init weights are a function of the seed
    cache, why_not = frozen_cache.classifier_cache(config, workdir, table)
    if cache is not None:  # the fine-tuned classifier's trained part on its frozen layers' cached outputs
        logging.info("Features of the fine-tuned classifier from its frozen cache %s (train_from=%s).", cache.key,
                     config.classifier.train_from)
        classifier_model = keras.saving.load_model(resolve_weights(config, workdir), compile=False)
        backbone = block_cache.build_features_part(classifier_model, cache.shape, config.classifier.train_from)
    else:
        if config.model.weights == "classifier":
            logging.info("Features of the classifier through its whole backbone: %s.", why_not)
        with strategy.scope():
            backbone = build_config_backbone(config, workdir)
    store = FeatureStore.create_or_open(
        features_dir(workdir), keys=table.keys, paths=table.paths, feature_dim=backbones.feature_dim_of(backbone),
        shard_size=config.extract.shard_size, extractor=extractor_settings(config, workdir))
    mine = store.task_shards(task_index, num_tasks)
    logging.info("Feature store %s: %d rows, %d shards; worker %d of %d owns %d shard(s) (rows %s), %d to do.",
                 store.directory, store.num_rows, store.num_shards, task_index, num_tasks, len(mine),
                 f"[{store.shard_rows(mine[0])[0]}, {store.shard_rows(mine[-1])[1]})" if mine else "none",
                 sum(not store.is_finished(s) for s in mine))
    if cache is not None:
        stats = block_cache.extract_from_cache(cache, backbone, store, batch_size=config.extract.batch_size,
                                               shards=mine)
    else:
        stats = extract_features(
            table.paths, store, backbone, image_size=(config.model.image_height, config.model.image_width),
            batch_size=config.extract.batch_size, resize=config.input.resize, strategy=strategy,
            parallel_calls=config.input.parallel_calls, progress=progress, shards=mine,
            max_pixels=config.input.max_pixels)
    record = store.finalize()
    stats["finalized"] = record is not None
    if record is None:
        logging.info("Worker %d of %d done; %d shard(s) of other workers still missing: the last worker to finish "
                     "writes the completion record.", task_index, num_tasks, len(store.unfinished_shards()))
    else:
        logging.info("Feature store complete: %d rows, %d valid; wrote its completion record.", record["num_rows"],
                     record["valid_rows"])
    return stats


