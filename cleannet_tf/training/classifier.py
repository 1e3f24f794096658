"""cleannet-train-classifier: backbone + softmax on the noisy labels, each image weighted.

A task on the training loop, as CleanNet's (training/loop.py; default, Mirrored and
MultiWorkerMirrored strategies), resumable from WORKDIR/classifier/checkpoints
with the same data order. The loss of a batch is sum_i w_i CE(x_i, y_i) / B
(B = the global batch size), so a weight of 0 removes an image's gradient and
weights of 1 give plain cross-entropy. Images of weight 0 are not read at all,
but an epoch is as many samples as the whole pool, so every weighting trains
for the same number of steps as the unweighted run (as the paper compares them).

Weights (config.classifier.weighting): "none" (all 1), "soft" (scores.tsv's
weight_soft: the calibrated P(label correct); in cleannet.mode=paper the paper's
max(0, s)), "hard" (1[s >= threshold]), with s the CleanNet score of the image's
label; a verification label overrides the score (1 -> weight 1, 0 -> weight 0).

With data.features set, the classifier is a softmax head on those frozen
features (`build_features_classifier`: input "features" (B, D), no image is
decoded), the test split's features giving its test accuracy; same weightings,
loop, epochs and outputs.
With config.classifier.finetune_epochs > 0, a second phase follows: that
many epochs on the images verified as correctly labelled, unweighted, at
config.classifier.finetune_learning_rate (the same loop and checkpoints).

Outputs in WORKDIR/classifier/: model.keras (the classifier; its layer
"backbone" is what `model.weights=classifier` extracts features with; a
features head has none),
metrics.json (test accuracy, weighting), checkpoints/, logs/.

Imports `data`, `features`.
"""

from __future__ import annotations

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import sanity
from cleannet_tf.data import images
from cleannet_tf.data import table as data_table
from cleannet_tf.data.features_npz import load_precomputed_features
from cleannet_tf.features import backbones
from cleannet_tf.training import loop

WEIGHTINGS = ("none", "soft", "hard")  # classifier.weighting (see the module docstring)


def weighted_cross_entropy(labels, logits, weights, *, global_batch_size: int):
    """sum_i w_i CE(logits_i, labels_i) / global_batch_size: (b,), (b, C), (b,) -> scalar (a replica's share)."""
    cross_entropy = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return tf.nn.compute_average_loss(cross_entropy * tf.cast(weights, cross_entropy.dtype),
                                      global_batch_size=global_batch_size)


def build_features_classifier(feature_mean: np.ndarray, feature_std: np.ndarray, num_classes: int) -> keras.Model:
    """Softmax head on frozen features: input "features" (B, D) -> outputs "logits", "probabilities" (B, C).

    The features are standardised by the pool's per-dimension mean and std (D,), fixed in the model.
    """
    feature_dim = len(feature_mean)
    features = keras.Input((feature_dim,), name="features", dtype="float32")
    normalized = keras.layers.Normalization(mean=feature_mean, variance=np.square(feature_std),
                                            name="standardize")(features)
    logits = keras.layers.Dense(num_classes, name="logits")(normalized)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(features, {"logits": logits, "probabilities": probabilities}, name="features_classifier")


def _per_epoch_features_dataset(features: tf.Tensor, rows: np.ndarray, labels, weights, *, epoch,
                                per_replica_batch, seed, shard, num_shards) -> tf.data.Dataset:
    """As _per_epoch_dataset, from features (N, D) held in memory: batches of "features" (b, D) of `rows`."""
    order = np.random.default_rng([seed, epoch]).permutation(len(rows))
    order = order[shard::num_shards]
    batches = tf.data.Dataset.from_tensor_slices({"row": rows[order].astype(np.int64),
                                                  "label": labels[order].astype(np.int32),
                                                  "weight": weights[order].astype(np.float32)})
    return batches.batch(per_replica_batch, drop_remainder=True).map(
        lambda batch: {**batch, "features": tf.gather(features, batch["row"])})


def _per_epoch_dataset(paths, labels, weights, *, epoch, image_size, per_replica_batch, config, shard,
                       num_shards) -> tf.data.Dataset:
    """One epoch of this input pipeline's shard, shuffled by (seed, epoch), per-replica batches."""
    order = np.random.default_rng([config.seed, epoch]).permutation(len(paths))
    order = order[shard::num_shards]
    return images.make_image_dataset(
        paths[order], rows=order, labels=labels[order], weights=weights[order], image_size=image_size,
        batch_size=per_replica_batch, resize=config.input.resize, augment=config.input.augment,
        seed=config.seed + epoch, parallel_calls=config.input.parallel_calls, drop_remainder=True,
        max_pixels=config.input.max_pixels)


class NoisyThenFinetuneSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from `learning_rate` over the first `noisy_steps` steps, then `finetune_learning_rate`."""

    def __init__(self, learning_rate: float, noisy_steps: int, finetune_learning_rate: float):
        self.learning_rate, self.noisy_steps = learning_rate, noisy_steps
        self.finetune_learning_rate = finetune_learning_rate
        self.cosine = keras.optimizers.schedules.CosineDecay(learning_rate, noisy_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        # CosineDecay holds its last value past noisy_steps; the fine-tuning rate replaces it there.
        return keras.ops.where(step < self.noisy_steps, self.cosine(step), self.finetune_learning_rate)

    def get_config(self) -> dict:
        return {"learning_rate": self.learning_rate, "noisy_steps": self.noisy_steps,
                "finetune_learning_rate": self.finetune_learning_rate}


def evaluate_features_accuracy(model: keras.Model, features: np.ndarray, labels: np.ndarray, *,
                               batch_size: int = 4096) -> float:
    """Top-1 accuracy of a features head on (n, D) features."""
    correct = 0
    for start in range(0, len(labels), batch_size):
        logits = model(features[start:start + batch_size], training=False)["logits"]
        correct += int(np.sum(np.argmax(logits, axis=-1) == labels[start:start + batch_size]))
    return correct / max(len(labels), 1)


IMAGE_EVAL_BATCH = 32  # images through a whole backbone, eagerly: a batch of 256 at 128 px peaked at 7.9 GB RSS


def evaluate_accuracy(model: keras.Model, paths: np.ndarray, labels: np.ndarray, *, image_size, config,
                      batch_size: int = IMAGE_EVAL_BATCH) -> float:
    """Top-1 accuracy on images (unreadable ones skipped), batch_size images at a time (memory ~ batch_size)."""
    dataset = images.make_image_dataset(paths, labels=labels, image_size=image_size, batch_size=batch_size,
                                        resize=config.input.resize, parallel_calls=config.input.parallel_calls,
                                        max_pixels=config.input.max_pixels)
    correct = total = 0
    for batch in dataset:
        predicted = np.argmax(model(batch["image"], training=False)["logits"], axis=-1)
        correct += int(np.sum(predicted == batch["label"].numpy()))
        total += len(predicted)
    return correct / max(total, 1)


class ClassifierTask(loop.Task):
    """Backbone + softmax on the training loop: the weighted noisy-label epochs, then the fine-tuning epochs.

    The rows of an epoch are a function of (seed, epoch); a noisy-label epoch has the whole pool's steps whatever
    the weights (the rows it samples repeat to fill it). One history entry and one checkpoint per epoch.
    """

    name = "classifier"

    def __init__(self, table: data_table.LabelTable, config: ml_collections.ConfigDict, *,
                 sample_weights: np.ndarray | None = None, initial_weights: str = "random",
                 features: np.ndarray | None = None, valid: np.ndarray | None = None):
        self.table, self.config, self.initial_weights = table, config, initial_weights
        self.image_size = (config.model.image_height, config.model.image_width)
        # features (N, D) of every table row (a features head), valid (N,): the rows that have them.
        self.features, self.input_name = features, "image" if features is None else "features"
        valid = np.ones(len(table), bool) if valid is None else np.asarray(valid, bool)
        self.valid = valid
        weights = np.ones(len(table), np.float32) if sample_weights is None else np.asarray(sample_weights, np.float32)
        in_pool = (table.split != data_table.SPLIT_TEST) & valid
        self.weights, self.pool = weights, np.nonzero(in_pool & (weights > 0))[0]
        self.verified_clean = np.nonzero(in_pool & (table.verification == 1))[0]
        self.global_batch = global_batch = config.classifier.batch_size
        # The epochs of both phases: (rows, weights, steps) each.
        self.epochs = []
        for name, rows, rows_weights, count, epoch_size in (
                ("noisy labels", self.pool, weights[self.pool], config.classifier.epochs, int(in_pool.sum())),
                ("fine-tuning on verified-correct labels", self.verified_clean,
                 np.ones(len(self.verified_clean), np.float32), config.classifier.finetune_epochs,
                 len(self.verified_clean))):
            if count and len(rows) // global_batch == 0:
                raise ValueError(f"{len(rows)} training images ({name}) is fewer than one batch of {global_batch}.")
            self.epochs += [(rows, rows_weights, epoch_size // global_batch)] * count
        self.epoch_size, self.epoch_steps = int(in_pool.sum()), int(in_pool.sum()) // global_batch
        self.epoch_ends = np.cumsum([steps for _, _, steps in self.epochs])
        self.total_steps = int(self.epoch_ends[-1])
        self.noisy_steps = int(self.epoch_ends[config.classifier.epochs - 1])
        self.epoch_end_steps = {int(end): epoch + 1 for epoch, end in enumerate(self.epoch_ends)}

    def build(self) -> None:
        config = self.config
        schedule = NoisyThenFinetuneSchedule(config.classifier.learning_rate, self.noisy_steps,
                                             config.classifier.finetune_learning_rate)
        self.optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
        if self.features is not None:
            pool_features = self.features[self.table.split != data_table.SPLIT_TEST][self.valid[
                self.table.split != data_table.SPLIT_TEST]].astype(np.float64)
            std = pool_features.std(axis=0)
            self.model = build_features_classifier(pool_features.mean(axis=0), np.where(std > 1e-6, std, 1.0),
                                                   self.table.num_classes)
            return
        backbone = backbones.build_backbone(config.model.backbone, image_size=self.image_size,
                                            weights=self.initial_weights, feature_dim=config.model.feature_dim)
        self.model = backbones.build_classifier(backbone, self.table.num_classes)

    def dataset(self, context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(self.global_batch)
        first_epoch = int(np.searchsorted(self.epoch_ends, start_step, side="right"))
        skip = start_step - (int(self.epoch_ends[first_epoch - 1]) if first_epoch else 0)
        # Every epoch yields exactly its steps' batches per replica (shards stay in step).
        replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
        shard, num_shards = context.input_pipeline_id, context.num_input_pipelines
        self._features_tensor = None  # made by this call's first epoch_dataset, shared by its epochs
        parts = [self.epoch_dataset(epoch, rows, rows_weights, per_replica_batch=per_replica, shard=shard,
                                    num_shards=num_shards).repeat().take(steps * replicas_here)
                 for epoch, (rows, rows_weights, steps) in enumerate(self.epochs) if epoch >= first_epoch]
        combined = parts[0]
        for part in parts[1:]:
            combined = combined.concatenate(part)
        return combined.skip(skip * replicas_here)

    def epoch_dataset(self, epoch: int, rows: np.ndarray, rows_weights: np.ndarray, *, per_replica_batch: int,
                      shard: int, num_shards: int) -> tf.data.Dataset:
        """Epoch `epoch`'s batches of this input pipeline: `rows` (table rows) shuffled by (seed, epoch)."""
        table = self.table
        if self.features is not None:
            if getattr(self, "_features_tensor", None) is None:
                self._features_tensor = tf.constant(self.features, tf.float32)
            return _per_epoch_features_dataset(self._features_tensor, rows, table.labels[rows],
                                               rows_weights, epoch=epoch, per_replica_batch=per_replica_batch,
                                               seed=self.config.seed, shard=shard, num_shards=num_shards)
        return _per_epoch_dataset(table.paths[rows], table.labels[rows], rows_weights, epoch=epoch,
                                  image_size=self.image_size, per_replica_batch=per_replica_batch,
                                  config=self.config, shard=shard, num_shards=num_shards)

    def replica_step(self, batch: dict) -> dict[str, tf.Tensor]:
        model = self.model
        with tf.GradientTape() as tape:
            logits = model(batch[self.input_name], training=True)["logits"]
            loss = weighted_cross_entropy(batch["label"], logits, batch["weight"],
                                          global_batch_size=self.global_batch)
            if model.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
            scaled_loss = self.optimizer.scale_loss(loss)  # the loss itself but under a LossScaleOptimizer
        gradients = tape.gradient(scaled_loss, model.trainable_variables)
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            # Keras skips the step (and lowers the loss scale) on inf/NaN in replica 0's gradients only, taking
            # them as all-reduced: another replica's non-finite gradients are zeroed so they cannot reach the
            # weights (an all-reduce here clashed with the optimizer's own collectives under MirroredStrategy).
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
            keep = tf.logical_or(finite, tf.equal(replica, 0))
            gradients = [tf.where(keep, g, tf.zeros_like(g)) for g in gradients]
        self.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == batch["label"], tf.float32))
        return {"loss": loss, "correct": correct}

    def is_log_step(self, step: int) -> bool:
        return step in self.epoch_end_steps

    is_checkpoint_step = is_log_step

    def log_entry(self, step: int, window: loop.Window) -> tuple[dict, dict[str, float]]:
        epoch = self.epoch_end_steps[step]
        phase = "noisy" if epoch <= self.config.classifier.epochs else "finetune"
        entry = {"epoch": epoch, "phase": phase, "step": step, "loss": window.sums["loss"] / window.steps,
                 "train_accuracy": window.sums["correct"] / (window.steps * self.global_batch)}
        logging.info("classifier (%s weights) epoch %d, %s: loss %.4f, training accuracy %.3f",
                     self.config.classifier.weighting, epoch,
                     "noisy labels" if phase == "noisy" else "fine-tuning on verified labels", entry["loss"],
                     entry["train_accuracy"])
        return entry, {"train/loss": entry["loss"], "train/accuracy": entry["train_accuracy"]}

    def finish(self) -> None:
        """Epochs of few steps leave BatchNorm's moving statistics unsettled: recomputed on the trained images (a
        head on precomputed features reads no image)."""
        if self.features is None and self.epoch_steps < sanity.MIN_STEPS_PER_EPOCH:
            backbones.recompute_batchnorm_statistics(self.model, images.make_image_dataset(
                self.table.paths[self.pool], image_size=self.image_size, batch_size=self.global_batch,
                resize=self.config.input.resize, parallel_calls=self.config.input.parallel_calls,
                max_pixels=self.config.input.max_pixels).map(lambda batch: batch["image"]))

    def payload(self, state: loop.LoopState) -> dict:
        """Test accuracy of the final model, weighting, sizes, seconds and the per-epoch history."""
        table, config, pool = self.table, self.config, self.pool
        test = (table.split == data_table.SPLIT_TEST) & self.valid
        if not test.any():
            test_accuracy = None
        elif self.features is not None:
            test_accuracy = evaluate_features_accuracy(self.model, self.features[test], table.labels[test])
        else:
            test_accuracy = evaluate_accuracy(self.model, table.paths[test], table.labels[test],
                                              image_size=self.image_size, config=config)
        logging.info("Classifier (%s weighting): test accuracy %s", config.classifier.weighting, test_accuracy)
        warnings = sanity.log(sanity.classifier_warnings(
            test_accuracy=test_accuracy, test_labels=table.labels[test], num_classes=table.num_classes,
            steps_per_epoch=self.epoch_steps, epoch_size=self.epoch_size, batch_size=self.global_batch,
            what="classifier" + ("" if config.classifier.weighting == "none" else f"_{config.classifier.weighting}")))
        return {"test_accuracy": test_accuracy, "weighting": config.classifier.weighting, "n_test": int(test.sum()),
                "input": self.input_name,
                "mean_weight": float(self.weights[pool].mean()) if len(pool) else None,
                "n_train": int(len(pool)), "epochs": config.classifier.epochs, "steps": self.total_steps,
                "finetune_epochs": config.classifier.finetune_epochs,
                "n_finetune": int(len(self.verified_clean)) if config.classifier.finetune_epochs else 0,
                "seconds": state.seconds, "history": state.history, "warnings": warnings}


def train_classifier(table: data_table.LabelTable, config: ml_collections.ConfigDict, output_dir: str, *,
                     sample_weights: np.ndarray | None = None, initial_weights: str = "random",
                     strategy: tf.distribute.Strategy | None = None, progress: bool = True,
                     features: np.ndarray | None = None, valid: np.ndarray | None = None) -> tuple[keras.Model, dict]:
    """Trains backbone + softmax on the pool rows (train and val) of `table` (ClassifierTask on the loop).

    Args:
        table: N rows; pool rows train, test rows (if any) measure accuracy.
        sample_weights: (N,) float32 weight per row (default 1).
        initial_weights: backbone weights to start from ("random", "imagenet", a file).
        features: optional (N, D) frozen features of every row: a softmax head on them instead (no images are
            read); default: config.data.features when set. valid: (N,) bool, the rows that have features.

    Returns:
        (classifier, metrics).
    """
    strategy = strategy or tf.distribute.get_strategy()
    global_batch, replicas = config.classifier.batch_size, strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise ValueError(f"classifier.batch_size {global_batch} must be divisible by the {replicas} replicas.")
    if features is None and config.data.features:
        features, valid = load_precomputed_features(config.data.features, table)
    task = ClassifierTask(table, config, sample_weights=sample_weights, initial_weights=initial_weights,
                          features=features, valid=valid)
    # metrics.json marks the step complete: written once, at the end.
    return loop.train(task, output_dir, strategy=strategy, seed=config.seed, max_to_keep=2,
                               running_metrics=False, progress=progress)
