"""Fine-tuning a pretrained backbone from a block on: the classifier of cleannet-train-classifier, practical on a
CPU and fast on GPUs.

config.classifier.train_from ("all", "block<k>", "head", "logits"; features/block_cache.py) splits the backbone
(efficientnet_lite0): the layers before it stay frozen in inference mode, the rest and the softmax train on the
noisy labels, each image weighted as in training/classifier.py (weighting none / soft / hard: the same task,
epochs, loss sum_i w_i CE_i / B, learning-rate schedule, optional verified-correct phase, checkpoints, outputs).

- Cached (classifier.frozen_cache: "auto" without a GPU, or "on"): the frozen part's outputs of every image are
  computed once into a float16 FeatureStore under `cache_dir` (resumable; a mirrored view too with
  input.augment=flip, one of the two drawn per image and epoch), so an epoch runs only the trained blocks and the
  head. A cache is keyed by what determines it (backbone, its weights, train_from, image size, resize), so the
  unweighted and the weighted fine-tunes share one.
- Uncached ("off", or GPUs under "auto"): images through the whole network, the frozen layers with
  trainable=False (inference mode), under any strategy; classifier.mixed_precision ("auto": on GPUs) computes in
  float16 with float32 weights and a dynamic loss scale, the logits and loss in float32.

Early stopping: classifier.holdout_fraction of the training rows (drawn by the seed from the non-test rows, the
same rows whatever the weighting) are held apart; after each epoch their weighted accuracy and cross-entropy (the
per-image weights, so a weighted run is judged on the rows CleanNet trusts) are measured, the best epoch's
(classifier.select_by: the highest accuracy, or the lowest loss) weights are kept
in the checkpoint, training stops after classifier.patience epochs without a better one, and model.keras holds
the best epoch's model. A run killed at any point resumes to the same result.

model.keras is always the whole float32 classifier (`backbones.build_classifier`: its layer "backbone" is what
model.weights=classifier extracts features with), whichever path trained it.

Imports `data`, `features`, `training`.
"""

from __future__ import annotations

import contextlib
import os

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import sanity
from cleannet_tf.data import images
from cleannet_tf.data import table as datasets
from cleannet_tf.features import backbones, block_cache
from cleannet_tf.training import classifier, loop

EVAL_BATCH = 256  # rows of cached frozen outputs per evaluation batch (images: classifier.IMAGE_EVAL_BATCH)


def has_gpu() -> bool:
    return bool(tf.config.list_logical_devices("GPU"))


def resolve_frozen_cache(config: ml_collections.ConfigDict) -> bool:
    """classifier.frozen_cache resolved: "auto" caches without a GPU when layers are frozen and the augmentation
    is cacheable (none, flip), on one host (the cache is a host's files: not under runtime.strategy=multi_worker)."""
    setting, cacheable = config.classifier.frozen_cache, config.input.augment in ("none", "flip")
    if setting == "auto":
        return (config.classifier.train_from != "all" and cacheable and not has_gpu()
                and config.runtime.strategy != "multi_worker")
    return setting == "on"


def resolve_mixed_precision(config: ml_collections.ConfigDict) -> bool:
    """classifier.mixed_precision resolved: "auto" is on when there is a GPU."""
    setting = config.classifier.mixed_precision
    return has_gpu() if setting == "auto" else setting == "on"


def uses_finetune(config: ml_collections.ConfigDict) -> bool:
    """True when cleannet-train-classifier trains through FinetuneTask (a split, held-apart rows or mixed
    precision); otherwise the plain ClassifierTask, which trains every layer the same way."""
    if config.data.features:
        return False
    return (config.classifier.train_from != "all" or config.classifier.holdout_fraction > 0
            or resolve_mixed_precision(config))


def holdout_mask(table: datasets.LabelTable, valid: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: round(fraction x pool) rows drawn by `seed` from the valid non-test rows (none for 0)."""
    pool = np.nonzero((table.split != datasets.SPLIT_TEST) & valid)[0]
    chosen = np.random.default_rng([seed, 7]).permutation(pool)[:int(round(fraction * len(pool)))]
    mask = np.zeros(len(table), bool)
    mask[chosen] = True
    return mask


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers built inside get the global dtype policy `name` (e.g. "mixed_float16"); restored after."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def frozen_settings(config: ml_collections.ConfigDict, initial_weights: str, dtype: str) -> dict:
    """What determines the frozen part's outputs (the cache's key)."""
    weights = initial_weights
    if os.path.exists(weights):
        weights = f"{os.path.abspath(weights)}@{os.path.getmtime(weights):.0f}"
    elif weights == "random":
        weights = f"random@seed{config.seed}"
    return {"backbone": config.model.backbone, "weights": weights, "train_from": config.classifier.train_from,
            "image_size": [config.model.image_height, config.model.image_width], "resize": config.input.resize,
            "max_pixels": config.input.max_pixels, "dtype": dtype}


class FinetuneTask(classifier.ClassifierTask):
    """ClassifierTask whose model trains from classifier.train_from on, from the cache or from images."""

    def __init__(self, table: datasets.LabelTable, config: ml_collections.ConfigDict, *,
                 sample_weights: np.ndarray | None = None, initial_weights: str = "random",
                 cache: block_cache.FrozenCache | None = None, mixed_precision: bool = False):
        valid = np.ones(len(table), bool) if cache is None else cache.valid()
        self.holdout = holdout_mask(table, valid, config.classifier.holdout_fraction, config.seed)
        super().__init__(table, config, sample_weights=sample_weights, initial_weights=initial_weights,
                         valid=valid & ~self.holdout)
        self.cache, self.mixed_precision = cache, mixed_precision
        self.train_from = config.classifier.train_from
        self.input_name = "image" if cache is None else "frozen"

    def build(self) -> None:
        config, num_classes = self.config, self.table.num_classes
        schedule = classifier.NoisyThenFinetuneSchedule(config.classifier.learning_rate, self.noisy_steps,
                                                        config.classifier.finetune_learning_rate)
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
        self.optimizer = keras.optimizers.LossScaleOptimizer(optimizer) if self.mixed_precision else optimizer
        # The whole float32 classifier: the initial weights of every path, and model.keras at the end.
        self.full = backbones.build_classifier(backbones.build_backbone(
            config.model.backbone, image_size=self.image_size, weights=self.initial_weights,
            feature_dim=config.model.feature_dim), num_classes)
        with dtype_policy("mixed_float16" if self.mixed_precision else keras.config.dtype_policy().name):
            if self.cache is not None:
                self.model = block_cache.build_trained_part(self.cache.shape, self.train_from, num_classes)
            elif self.mixed_precision:
                self.model = backbones.build_classifier(backbones.build_backbone(
                    config.model.backbone, image_size=self.image_size, feature_dim=config.model.feature_dim),
                    num_classes)
            else:
                self.model = self.full
        if self.model is not self.full:
            block_cache.copy_weights_by_name(self.full, self.model)
        if self.cache is None:
            block_cache.set_trainable_from(self.model, self.train_from)
        # The best held-apart epoch (classifier.select_by): its accuracy, loss, number and weights, checkpointed
        # with the model.
        self.best = tf.Module()
        self.best.accuracy = tf.Variable(-1.0, dtype=tf.float64, trainable=False)
        self.best.loss = tf.Variable(np.inf, dtype=tf.float64, trainable=False)
        self.best.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best.weights = [tf.Variable(keras.ops.convert_to_numpy(w), trainable=False) for w in self.model.weights]

    def checkpoint_items(self) -> dict:
        return {"best": self.best}

    def epoch_dataset(self, epoch: int, rows: np.ndarray, rows_weights: np.ndarray, *, per_replica_batch: int,
                      shard: int, num_shards: int) -> tf.data.Dataset:
        """As ClassifierTask's (the same rows, order and batches), the batches' "frozen" (b, *shape) read from the
        cache; with a flipped view, each row's view drawn by (seed, epoch)."""
        if self.cache is None:
            return super().epoch_dataset(epoch, rows, rows_weights, per_replica_batch=per_replica_batch,
                                         shard=shard, num_shards=num_shards)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(rows))
        views = np.random.default_rng([self.config.seed, epoch, 1]).integers(0, len(self.cache.views), len(rows))
        order = order[shard::num_shards]
        batches = tf.data.Dataset.from_tensor_slices({
            "row": rows[order].astype(np.int64), "view": views[order].astype(np.int64),
            "label": self.table.labels[rows[order]].astype(np.int32),
            "weight": rows_weights[order].astype(np.float32)})
        return batches.batch(per_replica_batch, drop_remainder=True).map(self._read_frozen).prefetch(
            tf.data.AUTOTUNE)

    def _read_frozen(self, batch: dict) -> dict:
        dtype = tf.as_dtype(self.cache.dtype)
        values = tf.numpy_function(self.cache.gather, [batch["row"], batch["view"]], dtype, stateful=False)
        frozen = tf.ensure_shape(tf.cast(values, tf.float32), (None, *self.cache.shape))
        return {**batch, "frozen": frozen}

    def _inputs(self, rows: np.ndarray, *, images_only: bool = False):
        """Unaugmented batches of `rows`: dicts with the model input ("frozen" from the cache, or "image" when
        there is none or `images_only`), "label", "weight"."""
        if self.cache is not None and not images_only:
            for start in range(0, len(rows), EVAL_BATCH):
                chunk = rows[start:start + EVAL_BATCH]
                yield {"frozen": tf.constant(self.cache.gather(chunk), tf.float32),
                       "label": self.table.labels[chunk], "weight": self.weights[chunk]}
            return
        config = self.config
        dataset = images.make_image_dataset(
            self.table.paths[rows], rows=rows, labels=self.table.labels[rows], weights=self.weights[rows],
            image_size=self.image_size, batch_size=classifier.IMAGE_EVAL_BATCH, resize=config.input.resize,
            parallel_calls=config.input.parallel_calls, max_pixels=config.input.max_pixels)
        for batch in dataset:
            yield {"image": batch["image"], "label": batch["label"].numpy(), "weight": batch["weight"].numpy()}

    def holdout_metrics(self) -> dict[str, float]:
        """Weighted accuracy and cross-entropy of the model on the held-apart rows (their per-image weights)."""
        correct = loss = total = 0.0
        for batch in self._inputs(np.nonzero(self.holdout)[0]):
            logits = self.model(batch[self.input_name], training=False)["logits"]
            weight = batch["weight"].astype(np.float64)
            cross_entropy = keras.losses.sparse_categorical_crossentropy(batch["label"], logits, from_logits=True)
            correct += float(np.sum(weight * (np.argmax(logits, axis=-1) == batch["label"])))
            loss += float(np.sum(weight * keras.ops.convert_to_numpy(cross_entropy)))
            total += float(weight.sum())
        return {"accuracy": correct / max(total, 1e-12), "loss": loss / max(total, 1e-12), "weight": total}

    def log_entry(self, step: int, window: loop.Window) -> tuple[dict, dict[str, float]]:
        entry, scalars = super().log_entry(step, window)
        if not self.holdout.any():
            return entry, scalars
        entry["val"] = val = self.holdout_metrics()
        scalars.update({"holdout/accuracy": val["accuracy"], "holdout/loss": val["loss"]})
        select_by = self.config.classifier.select_by
        if (val["loss"] < float(self.best.loss.numpy()) if select_by == "loss"
                else val["accuracy"] > float(self.best.accuracy.numpy())):
            self.best.accuracy.assign(val["accuracy"])
            self.best.loss.assign(val["loss"])
            self.best.epoch.assign(entry["epoch"])
            for kept, weight in zip(self.best.weights, self.model.weights, strict=True):
                kept.assign(keras.ops.convert_to_numpy(weight))
        logging.info("classifier epoch %d: held-apart weighted accuracy %.4f, loss %.4f (best %s: epoch %d)",
                     entry["epoch"], val["accuracy"], val["loss"], select_by, int(self.best.epoch.numpy()))
        return entry, scalars

    def should_stop(self, step: int) -> bool:
        epoch, patience = self.epoch_end_steps.get(step), self.config.classifier.patience
        return bool(patience and epoch and epoch - int(self.best.epoch.numpy()) >= patience)

    def finish(self) -> None:
        """The best held-apart epoch's weights (if any), BatchNorm statistics of short epochs recomputed, all into
        the whole float32 classifier (self.model from here on)."""
        if int(self.best.epoch.numpy()) > 0:
            for weight, kept in zip(self.model.weights, self.best.weights, strict=True):
                weight.assign(kept.numpy())
        short_epochs = self.epoch_steps < sanity.MIN_STEPS_PER_EPOCH
        if short_epochs and not self.mixed_precision:
            backbones.recompute_batchnorm_statistics(
                self.model, (batch[self.input_name] for batch in self._inputs(self.pool)))
        if self.model is not self.full:
            block_cache.copy_weights_by_name(self.model, self.full)
        self.full.trainable = True
        self.model = self.full
        if short_epochs and self.mixed_precision:  # in float32: float16 batch variances can overflow
            block_cache.set_trainable_from(self.full, self.train_from)  # frozen statistics stay as they are
            backbones.recompute_batchnorm_statistics(
                self.full, (batch["image"] for batch in self._inputs(self.pool, images_only=True)))
            self.full.trainable = True

    def payload(self, state: loop.LoopState) -> dict:
        """ClassifierTask's (test accuracy of the whole classifier on the test images), and how it trained."""
        payload = super().payload(state)
        epochs_trained = int(np.searchsorted(self.epoch_ends, state.step, side="right"))
        payload.update({
            "train_from": self.train_from, "frozen_cache": self.cache is not None,
            "cache_views": list(self.cache.views) if self.cache is not None else [],
            "frozen_cache_key": self.cache.key if self.cache is not None else None,
            "mixed_precision": self.mixed_precision, "n_holdout": int(self.holdout.sum()),
            "best_epoch": int(self.best.epoch.numpy()) or None,
            "best_holdout_accuracy": float(self.best.accuracy.numpy()) if self.holdout.any() else None,
            "best_holdout_loss": float(self.best.loss.numpy()) if self.holdout.any() else None,
            "select_by": self.config.classifier.select_by,
            "epochs_trained": epochs_trained, "steps_trained": int(state.step),
            "stopped_early": state.step < self.total_steps})
        return payload


def train_finetune(table: datasets.LabelTable, config: ml_collections.ConfigDict, output_dir: str, *,
                   cache_dir: str, sample_weights: np.ndarray | None = None, initial_weights: str = "random",
                   strategy: tf.distribute.Strategy | None = None, progress: bool = True,
                   cache_dtype: str = "float16") -> tuple[keras.Model, dict]:
    """Fine-tunes backbone + softmax from config.classifier.train_from on (FinetuneTask on the loop).

    Args:
        table: N rows; pool rows train (but the held-apart ones), test rows measure accuracy.
        output_dir: model.keras, metrics.json, checkpoints/, logs/.
        cache_dir: the cache root: the frozen part's outputs go to cache_dir/<key of their settings>/<view>/.
        sample_weights: (N,) float32 weight per row (default 1).
        initial_weights: backbone weights to start from ("random", "imagenet", a file).
        cache_dtype: the cache's storage ("float16"; "float32" for exact comparisons).

    Returns:
        (the whole classifier, metrics).
    """
    strategy = strategy or tf.distribute.get_strategy()
    global_batch, replicas = config.classifier.batch_size, strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"classifier.batch_size {global_batch} must be divisible by the {replicas} replicas.")
    cache = None
    if resolve_frozen_cache(config):
        settings = frozen_settings(config, initial_weights, cache_dtype)
        keras.utils.set_random_seed(config.seed)  # random initial weights: those FinetuneTask.build makes
        with strategy.scope():
            backbone = backbones.build_backbone(
                config.model.backbone, image_size=(config.model.image_height, config.model.image_width),
                weights=initial_weights, feature_dim=config.model.feature_dim)
        directory = os.path.join(cache_dir, block_cache.cache_key(settings))
        logging.info("Frozen layers' outputs (train_from=%s) cached in %s", config.classifier.train_from, directory)
        cache = block_cache.fill_frozen_cache(
            directory, keys=table.keys, paths=table.paths, backbone=backbone,
            train_from=config.classifier.train_from,
            views=block_cache.VIEWS if config.input.augment == "flip" else block_cache.VIEWS[:1], settings=settings,
            image_size=(config.model.image_height, config.model.image_width), resize=config.input.resize,
            batch_size=config.extract.batch_size, strategy=strategy, dtype=cache_dtype,
            parallel_calls=config.input.parallel_calls, max_pixels=config.input.max_pixels, progress=progress)
    task = FinetuneTask(table, config, sample_weights=sample_weights, initial_weights=initial_weights, cache=cache,
                        mixed_precision=resolve_mixed_precision(config))
    return loop.train(task, output_dir, strategy=strategy, seed=config.seed, max_to_keep=2, running_metrics=False,
                      progress=progress)
