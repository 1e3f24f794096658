"""CleanNet as a task on the training loop (training/loop.py); the cleannet-train step is pipeline/train.py.

The loop runs `strategy.run` on per-replica batches, so the same code trains on
one CPU, under MirroredStrategy on many GPUs, and under
MultiWorkerMirroredStrategy on many hosts (Keras 3.15's `fit()` is broken under
the latter).

Outputs in WORKDIR/cleannet/: checkpoints/ (every train.checkpoint_every steps;
a killed run resumes from the last one with the same data order), model.keras
(the best model by validation error on verified classes, never overwritten by
a worse one), metrics.json, logs/ (TensorBoard). Only the chief writes them.

Imports `data`, `features`, `model`, `ops`, `training`.
"""

from __future__ import annotations

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import ops
from cleannet_tf.data import table as data_table
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model import losses
from cleannet_tf.model.cleannet import (
    MODE_SCORING,
    build_cleannet,
    encode_classes,
    query_encoder_of,
    reference_encoder_of,
)
from cleannet_tf.training import loop, metrics, pool

ENCODINGS = ("per_class", "per_sample")


def build_model_from_config(config: ml_collections.ConfigDict, feature_dim: int, num_references: int) -> keras.Model:
    c = config.cleannet
    return build_cleannet(feature_dim, num_references, query_hidden_dim=c.query_hidden_dim,
                          reference_hidden_dim=c.reference_hidden_dim, attention_dim=c.attention_dim,
                          embed_dim=c.embed_dim, feature_norm=c.feature_norm, dropout_rate=c.dropout_rate,
                          weight_decay=c.weight_decay)


def build_optimizer(train_config: ml_collections.ConfigDict) -> keras.optimizers.Optimizer:
    """SGD with momentum; lr decays by lr_decay_factor every lr_decay_steps (staircase)."""
    schedule = keras.optimizers.schedules.ExponentialDecay(
        train_config.learning_rate, train_config.lr_decay_steps, train_config.lr_decay_factor, staircase=True)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=train_config.momentum)


def score_pool_rows(model: keras.Model, data: pool.TrainingData, references: np.ndarray, rows: np.ndarray,
                    *, margin: bool = False, batch_size: int = 8192) -> np.ndarray:
    """Scores (dropout off) of pool rows `rows` against their labels: (len(rows),) float32.

    margin=False: s = cos(query, own class), the paper's score. margin=True (mode
    "robust"): s minus the best cosine to any other class, which needs no
    per-class threshold and so carries over to classes nobody verified.
    """
    class_embeddings = encode_classes(model, references)
    class_embeddings = tf.math.l2_normalize(class_embeddings, axis=-1)
    encoder = query_encoder_of(model)
    scores = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        query = tf.math.l2_normalize(encoder(data.features[chunk], training=False)["query_embedding"], axis=-1)
        similarity = tf.matmul(query, class_embeddings, transpose_b=True).numpy()  # (b, C)
        own, own_margin = ops.own_and_margin(similarity, data.labels[chunk])
        scores.append((own_margin if margin else own).astype(np.float32))
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def validation_metrics(scores: np.ndarray, data: pool.TrainingData) -> dict:
    """Detection metrics on the validation rows: threshold from verified classes, held-out reported apart."""
    rows = data.validation
    labels, verification = data.labels[rows], data.verification[rows]
    heldout = data.heldout_classes[labels]
    seen = ~heldout
    if not seen.any():
        return {"n_val": 0}
    threshold, error = metrics.best_threshold(scores[seen], verification[seen])
    result = {"threshold": threshold, "n_val": int(seen.sum()), "detection_error": error,
              "roc_auc": metrics.detection_metrics(scores[seen], verification[seen], threshold)["roc_auc"]}
    if heldout.any():
        held = metrics.detection_metrics(scores[heldout], verification[heldout], threshold)
        result.update(detection_error_heldout=held["error"], roc_auc_heldout=held["roc_auc"],
                      n_val_heldout=held["n"])
    else:
        result.update(detection_error_heldout=None, roc_auc_heldout=None, n_val_heldout=0)
    per_class = metrics.per_class_error(scores, verification, labels, threshold, len(data.class_names))
    result["per_class_error"] = {data.class_names[c]: float(e) for c, e in enumerate(per_class) if np.isfinite(e)}
    return result


class CleanNetTask(loop.Task):
    """CleanNet on the training loop: each step half verified, half unverified rows (train_data.StepSampler).

    Each replica's loss is summed over its samples and divided by the global batch size; gradients are summed
    across replicas, which equals the single-device mean. `class_embeddings(classes, training)` maps (n,) class
    ids to (n, E) class embeddings; override it to encode the reference sets differently (benchmarks).
    """

    name = "cleannet"

    def __init__(self, data: pool.TrainingData, reference_sets: ReferenceSets,
                 config: ml_collections.ConfigDict, *, encoding: str = "per_class"):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}. Received: {encoding!r}")
        self.data, self.reference_sets, self.config, self.encoding = data, reference_sets, config, encoding
        self.total_steps = config.train.steps
        self.global_batch = config.train.batch_size
        self.half = self.global_batch // 2
        self.weights = losses.LossWeights.from_config(config.loss)
        self.objective = "detection_error" if len(data.validation) else None
        self.log_steps = loop.every(config.train.log_every, self.total_steps)
        self.eval_steps = loop.every(config.train.eval_every, self.total_steps)
        self.checkpoint_steps = loop.every(config.train.checkpoint_every, self.total_steps)
        self.samples_per_second = None

    def build(self) -> None:
        self.model = build_model_from_config(self.config, self.data.feature_dim,
                                             self.reference_sets.references.shape[1])
        self.optimizer = build_optimizer(self.config.train)
        self.references = tf.Variable(self.reference_sets.references, trainable=False, name="references")
        self.query_encoder, self.reference_encoder = query_encoder_of(self.model), reference_encoder_of(self.model)

    def dataset(self, context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
        replicas = context.num_replicas_in_sync
        sampler = pool.StepSampler(self.data, verified_per_step=self.half, unverified_per_step=self.half,
                                         seed=self.config.seed)
        per_pipeline = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * per_pipeline
        return pool.make_train_dataset(self.data, sampler, start_step=start_step, num_steps=self.total_steps,
                                             num_replicas=replicas, replica_ids=range(first, first + per_pipeline))

    def class_embeddings(self, classes: tf.Tensor, *, training: bool) -> tf.Tensor:
        """(n,) class ids -> (n, E) class embeddings of their reference sets."""
        return self.reference_encoder(tf.gather(self.references, classes), training=training)["class_embedding"]

    def replica_step(self, batch: dict) -> dict[str, tf.Tensor]:
        weights, model = self.weights, self.model
        use_negatives = weights.other_class_weight > 0
        with tf.GradientTape() as tape:
            query = self.query_encoder(batch["query_features"], training=True)
            labels = batch["label"]
            if use_negatives:
                labels = tf.concat([labels, batch["negative_label"]], axis=0)
            if self.encoding == "per_class":  # each distinct class of the batch once
                classes, index = tf.unique(labels)
                class_embedding = tf.gather(self.class_embeddings(classes, training=True), index)
            else:  # the paper's: every sample carries its own copy of its class's reference set
                class_embedding = self.class_embeddings(labels, training=True)
            query_embedding = tf.math.l2_normalize(query["query_embedding"], -1)
            class_embedding = tf.math.l2_normalize(class_embedding, -1)
            batch_size = tf.shape(query_embedding)[0]
            score = tf.reduce_sum(query_embedding * class_embedding[:batch_size], axis=-1)
            per_sample = losses.per_sample_loss(score, query["normalized_features"], query["reconstruction"],
                                                batch["verification_label"], batch["is_verified"], weights)
            if use_negatives:
                negative_score = tf.reduce_sum(query_embedding * class_embedding[batch_size:], axis=-1)
                per_sample += weights.other_class_weight * losses.other_class_loss(negative_score,
                                                                                   margin=weights.margin)
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=self.global_batch)
            regularization = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
            loss += tf.nn.scale_regularization_loss(regularization)
        gradients = tape.gradient(loss, model.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        verified = batch["is_verified"]
        wrong = tf.cast((score >= 0.1) != (batch["verification_label"] > 0), tf.float32) * verified
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        return {"loss": loss, "regularization": regularization / replicas,
                "verified_error_sum": tf.reduce_sum(wrong), "verified_count": tf.reduce_sum(verified)}

    def is_log_step(self, step: int) -> bool:
        return self.log_steps(step)

    def is_eval_step(self, step: int) -> bool:
        return self.eval_steps(step)

    def is_checkpoint_step(self, step: int) -> bool:
        return self.checkpoint_steps(step)

    def log_entry(self, step: int, window: loop.Window) -> tuple[dict, dict[str, float]]:
        self.samples_per_second = window.steps * self.global_batch / max(window.seconds, 1e-9)
        entry = {"step": step, "loss": window.sums["loss"] / window.steps,
                 "train_error_at_0.1": window.sums["verified_error_sum"] / max(window.sums["verified_count"], 1.0),
                 "learning_rate": float(self.optimizer.learning_rate), "samples_per_second": self.samples_per_second}
        logging.info("step %d: loss %.4f, train error %.3f, lr %.4g, %.0f samples/s", step, entry["loss"],
                     entry["train_error_at_0.1"], entry["learning_rate"], self.samples_per_second)
        return entry, {"train/loss": entry["loss"], "train/error_at_0.1": entry["train_error_at_0.1"],
                       "train/learning_rate": entry["learning_rate"],
                       "train/steps_per_second": self.samples_per_second / self.global_batch}

    def pool_scores(self, rows: np.ndarray) -> np.ndarray:
        """The scores of pool rows that evaluation thresholds (the margin in modes robust and stacked)."""
        return score_pool_rows(self.model, self.data, self.reference_sets.references, rows,
                               margin=MODE_SCORING[self.config.cleannet.mode] != "cosine")

    def evaluate(self, step: int) -> tuple[dict, dict[str, float]]:
        val = validation_metrics(self.pool_scores(self.data.validation), self.data)
        if not val.get("n_val"):
            return val, {}
        logging.info("step %d: validation error %.4f at threshold %.3f, ROC-AUC %.4f; held-out error %s",
                     step, val["detection_error"], val["threshold"], val["roc_auc"], val["detection_error_heldout"])
        scalars = {"val/detection_error": val["detection_error"], "val/roc_auc": val["roc_auc"]}
        if val["detection_error_heldout"] is not None:
            scalars["val/detection_error_heldout"] = val["detection_error_heldout"]
        return val, scalars

    def payload(self, state: loop.LoopState) -> dict:
        best = state.best or {}
        samples_per_second = self.samples_per_second  # None when this run trained no step: the last one logged
        if samples_per_second is None:
            samples_per_second = next((h["samples_per_second"] for h in reversed(state.history)
                                       if h.get("samples_per_second") is not None), None)
        return {"mode": self.config.cleannet.mode, "encoding": self.encoding, "step": state.step,
                "steps": self.total_steps, "best_step": state.best_step, "threshold": best.get("threshold"),
                "detection_error": best.get("detection_error"), "roc_auc": best.get("roc_auc"),
                "detection_error_heldout": best.get("detection_error_heldout"),
                "roc_auc_heldout": best.get("roc_auc_heldout"), "n_val": best.get("n_val", 0),
                "samples_per_second": samples_per_second, "best": best, "history": state.history}


def train_cleannet(data: pool.TrainingData, reference_sets: ReferenceSets, config: ml_collections.ConfigDict,
                   output_dir: str, *, strategy: tf.distribute.Strategy | None = None, encoding: str = "per_class",
                   progress: bool = True, task: CleanNetTask | None = None) -> tuple[keras.Model, dict]:
    """Trains CleanNet on the training loop; resumes from output_dir/checkpoints when there is one.

    Args:
        data: rows and features (see train_data.prepare_training_data).
        reference_sets: (C, K, D) reference sets.
        config: the full config (cleannet, loss, train, seed).
        output_dir: WORKDIR/cleannet.
        encoding: "per_class" (each distinct class of a batch encoded once) or
            "per_sample" (the paper's; one reference-set copy per sample).
        progress: a progress bar (on a terminal).
        task: a CleanNetTask (subclass) to train instead of CleanNetTask(data, reference_sets, config, encoding).

    Returns:
        (the model after the last step, the contents of metrics.json).
    """
    strategy = strategy or tf.distribute.get_strategy()
    task = task or CleanNetTask(data, reference_sets, config, encoding=encoding)
    replicas = strategy.num_replicas_in_sync
    if task.half % replicas:
        raise ValueError(f"train.batch_size / 2 = {task.half} must be divisible by the {replicas} replicas.")
    return loop.train(task, output_dir, strategy=strategy, seed=config.seed, progress=progress)


def log_calibration_classes(class_names, calibration: np.ndarray, fraction: float) -> list[str]:
    """Logs the calibration classes (C,) bool by name; returns their names."""
    names = [class_names[c] for c in np.nonzero(calibration)[0]]
    if names:
        logging.info("Calibration classes (cleannet.calibration_fraction=%g, not held out): %d of %d: %s%s.",
                     fraction, len(names), len(class_names), ", ".join(names[:20]),
                     f" and {len(names) - 20} more" if len(names) > 20 else "")
    return names


def pick_calibration_classes(verified_labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """(C,) bool: a seeded `fraction` of the classes in `verified_labels` (labels of verified training rows)."""
    calibration = np.zeros(num_classes, bool)
    candidates = np.unique(verified_labels)
    if fraction <= 0 or len(candidates) < 2:
        return calibration
    count = min(len(candidates) - 1, max(1, round(fraction * len(candidates))))
    calibration[np.random.default_rng([seed, 0xCA11]).choice(candidates, count, replace=False)] = True
    return calibration


def calibration_classes(table: data_table.LabelTable, fraction: float, seed: int) -> np.ndarray:
    """(C,) bool: the verified classes whose verification labels CleanNet does not train on (a seeded draw).

    With cleannet.mode=stacked, cleannet-verify fits its score combination on these classes' verified rows,
    where CleanNet behaves as on classes nobody verified. fraction 0: none.
    """
    verified = (table.verification >= 0) & (table.split == data_table.SPLIT_TRAIN)
    verified_labels = table.labels[verified & ~table.heldout_classes[table.labels]]
    return pick_calibration_classes(verified_labels, table.num_classes, fraction, seed)


