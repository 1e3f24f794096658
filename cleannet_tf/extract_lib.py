"""Feature extraction: every table image -> one feature vector in WORKDIR/features/.

Runs the backbone under any tf.distribute strategy (one device or mirrored over
many), shard by shard, and is resumable: finished shards are kept and skipped.
Across hosts, each worker (task i of n, from TF_CONFIG or flags) extracts its own
block of shards into the same store; the worker that finds every shard present
at its end writes the store's completion record.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence

import keras
import ml_collections
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from cleannet_tf import backbones, datasets, input_pipeline
from cleannet_tf.feature_store import ArrayFeatures, FeatureSource, FeatureStore


def features_dir(workdir: str) -> str:
    return os.path.join(workdir, "features")


def resolve_weights(config: ml_collections.ConfigDict, workdir: str) -> str:
    """model.weights with "classifier" replaced by WORKDIR/classifier/model.keras."""
    if config.model.weights == "classifier":
        return os.path.join(workdir, "classifier", "model.keras")
    return config.model.weights


def extractor_settings(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """What determines the features; a store made with other settings is not reused."""
    weights = resolve_weights(config, workdir)
    weights_id = weights
    if os.path.exists(weights):
        weights_id = f"{os.path.abspath(weights)}@{os.path.getmtime(weights):.0f}"
    return {"backbone": config.model.backbone, "weights": weights_id, "feature_dim": config.model.feature_dim,
            "image_size": [config.model.image_height, config.model.image_width], "resize": config.input.resize}


def _predict_fn(backbone: keras.Model, strategy: tf.distribute.Strategy):
    @tf.function
    def step(batch):
        def replica_step(batch):
            return batch["row"], backbone(batch["image"], training=False)["features"]
        return strategy.run(replica_step, args=(batch,))
    return step


def _pad_batch(batch: dict, batch_size: int) -> dict:
    """Pads every tensor of a batch to batch_size rows: zeros, and row id -1."""
    missing = batch_size - tf.shape(batch["row"])[0]

    def pad(name, tensor):
        paddings = [[0, missing]] + [[0, 0]] * (len(tensor.shape) - 1)
        return tf.pad(tensor, paddings, constant_values=-1 if name == "row" else 0)

    return {name: pad(name, tensor) for name, tensor in batch.items()}


def _local_concat(strategy, per_replica) -> np.ndarray:
    return np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)], axis=0)


def worker_task(task_index: int | None = None, num_tasks: int | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(task index, number of tasks) of this extraction worker.

    From `task_index`/`num_tasks` when given, else from TF_CONFIG in `environ` (default os.environ): the chief
    and the workers extract, in the order chief, worker 0, worker 1, ...; without TF_CONFIG, (0, 1).

    Raises:
        ValueError: only one of the two arguments given, an index out of range, or a TF_CONFIG that cannot be
            read or whose task is not a chief or worker (e.g. "ps", "evaluator").
    """
    if (task_index is None) != (num_tasks is None):
        raise ValueError(f"Give both task_index and num_tasks, or neither. Received task_index={task_index}, "
                         f"num_tasks={num_tasks}.")
    if task_index is None:
        raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
        if not raw:
            return 0, 1
        try:
            tf_config = json.loads(raw)
            cluster, task = tf_config.get("cluster", {}), tf_config.get("task", {})
            chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
            task_type, index = task.get("type"), int(task.get("index", 0))
        except (ValueError, AttributeError, TypeError) as error:
            raise ValueError(f"TF_CONFIG is not a JSON object with 'cluster' and 'task': {error}") from error
        if task_type not in ("chief", "worker"):
            raise ValueError(f"TF_CONFIG task type {task_type!r} does not extract: only 'chief' and 'worker' do.")
        task_index, num_tasks = (index if task_type == "chief" else chiefs + index), chiefs + workers
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"Need 0 <= task_index < num_tasks. Received task_index={task_index}, num_tasks={num_tasks}.")
    return int(task_index), int(num_tasks)


def extract_features(paths: np.ndarray, store: FeatureStore, backbone: keras.Model, *, image_size: tuple[int, int],
                     batch_size: int, resize: str = "squash", strategy: tf.distribute.Strategy | None = None,
                     parallel_calls: int = 0, progress: bool = True, shards: Sequence[int] | None = None,
                     max_pixels: int = input_pipeline.DEFAULT_MAX_PIXELS) -> dict:
    """Fills the unfinished shards of `store` (of `shards` only, when given) with `backbone` features of `paths`.

    Args:
        paths: (N,) str. Image files in table row order.
        store: the FeatureStore to fill (N rows, D = backbone output).
        backbone: input "image" (B, H, W, 3) -> {"features": (B, D)}, built in
            `strategy.scope()`.
        batch_size: int. Global batch size (split over replicas).
        shards: the shards this call may write (a worker's share); None: all.
        max_pixels: images over this many pixels (by their header) are skipped undecoded as "too large".

    Returns:
        Stats: images, unreadable_rows and too_large_rows (row lists), seconds, images_per_second,
        shards_done_before (of `shards`), shards_written.
    """
    strategy = strategy or tf.distribute.get_strategy()
    mine = range(store.num_shards) if shards is None else sorted(int(s) for s in shards)
    shards = [s for s in mine if not store.is_finished(s)]
    stats = {"images": 0, "unreadable_rows": [], "too_large_rows": [], "seconds": 0.0, "images_per_second": 0.0,
             "shards_done_before": len(mine) - len(shards), "shards_written": []}
    if not shards:
        return stats
    rows = np.concatenate([np.arange(*store.shard_rows(s)) for s in shards])
    dataset = input_pipeline.make_image_dataset(
        paths[rows], rows=rows, image_size=image_size, batch_size=batch_size, resize=resize,
        parallel_calls=parallel_calls, max_pixels=max_pixels)
    if strategy.num_replicas_in_sync > 1:
        # Full batches only: an uneven last batch would leave a replica an empty batch, which some CPU
        # kernels (oneDNN convolutions) reject. Padding rows are -1 and dropped below.
        dataset = dataset.map(lambda batch: _pad_batch(batch, batch_size))
    step = _predict_fn(backbone, strategy)
    pending_rows, pending_features = [], []
    next_shard = 0  # index into `shards`

    def flush(upto_row: int) -> None:
        """Writes every pending shard whose rows all lie below `upto_row`."""
        nonlocal next_shard, pending_rows, pending_features
        if not pending_rows and next_shard >= len(shards):
            return
        got_rows = np.concatenate(pending_rows) if pending_rows else np.zeros(0, np.int64)
        got_features = (np.concatenate(pending_features) if pending_features
                        else np.zeros((0, store.feature_dim), np.float32))
        while next_shard < len(shards):
            start, end = store.shard_rows(shards[next_shard])
            if end > upto_row:
                break
            inside = (got_rows >= start) & (got_rows < end)
            features = np.zeros((end - start, store.feature_dim), np.float32)
            valid = np.zeros(end - start, bool)
            features[got_rows[inside] - start] = got_features[inside]
            valid[got_rows[inside] - start] = True
            skipped = np.arange(start, end)[~valid]
            if len(skipped):
                reasons = np.array(input_pipeline.skipped_reasons(paths[skipped], max_pixels))
                for reason, key in ((input_pipeline.UNREADABLE, "unreadable_rows"),
                                    (input_pipeline.TOO_LARGE, "too_large_rows")):
                    rows_of = skipped[reasons == reason]
                    if len(rows_of):
                        logging.warning("Shard %d: %d %s image(s) skipped%s, e.g. %s", shards[next_shard],
                                        len(rows_of), reason, f" (over {max_pixels} pixels)"
                                        if reason == input_pipeline.TOO_LARGE else "", ", ".join(paths[rows_of[:3]]))
                        stats[key].extend(rows_of.tolist())
            store.write_shard(shards[next_shard], features, valid)
            stats["shards_written"].append(shards[next_shard])
            got_rows, got_features = got_rows[~inside], got_features[~inside]
            next_shard += 1
        pending_rows, pending_features = [got_rows], [got_features]

    start_time = time.perf_counter()
    with tqdm.tqdm(total=len(rows), unit="img", desc="extract", disable=None if progress else True) as bar:
        for batch in strategy.experimental_distribute_dataset(dataset):
            batch_rows, batch_features = step(batch)
            batch_rows = _local_concat(strategy, batch_rows)
            batch_features = _local_concat(strategy, batch_features)[batch_rows >= 0]
            batch_rows = batch_rows[batch_rows >= 0]
            order = np.argsort(batch_rows, kind="stable")
            pending_rows.append(batch_rows[order])
            pending_features.append(batch_features[order])
            stats["images"] += len(batch_rows)
            bar.update(len(batch_rows))
            # Rows arrive in order, so every shard ending at or before the last
            # row seen (exclusive) is complete, whatever images were skipped.
            flush(int(batch_rows.max()))
    flush(store.num_rows + 1)
    stats["seconds"] = time.perf_counter() - start_time
    stats["images_per_second"] = stats["images"] / max(stats["seconds"], 1e-9)
    logging.info("Extracted %d images in %.1f s (%.1f images/s) on %d replica(s); %d unreadable, %d too large.",
                 stats["images"], stats["seconds"], stats["images_per_second"], strategy.num_replicas_in_sync,
                 len(stats["unreadable_rows"]), len(stats["too_large_rows"]))
    return stats


def build_config_backbone(config: ml_collections.ConfigDict, workdir: str) -> keras.Model:
    """The backbone named by config.model (weights resolved against `workdir`)."""
    return backbones.build_backbone(
        config.model.backbone, image_size=(config.model.image_height, config.model.image_width),
        weights=resolve_weights(config, workdir), feature_dim=config.model.feature_dim)


def run_extract(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None,
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
    table = table if table is not None else datasets.load_table(config, workdir)
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(config.seed)  # random-init weights are a function of the seed
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


def open_features(config: ml_collections.ConfigDict, workdir: str, table: datasets.LabelTable) -> FeatureSource:
    """The features of `table`: data.features if given, else the finished WORKDIR/features/ store."""
    if config.data.features:
        return ArrayFeatures(*datasets.load_precomputed_features(config.data.features, table))
    store = FeatureStore(features_dir(workdir))
    if store.num_rows != len(table) or not np.array_equal(store.keys(), table.keys):
        raise ValueError(f"{store.directory} holds features of another table ({store.num_rows} rows, "
                         f"now {len(table)}): run cleannet-extract with this config, or use another --workdir.")
    return store
