"""cleannet-train: one custom training loop for every tf.distribute strategy.

The loop runs `strategy.run` on per-replica batches, so the same code trains on
one CPU, under MirroredStrategy on many GPUs, and under
MultiWorkerMirroredStrategy on many hosts (Keras 3.15's `fit()` is broken under
the latter). Each replica's loss is summed over its samples and divided by the
global batch size; gradients are summed across replicas, which equals the
single-device mean.

Outputs in WORKDIR/cleannet/: checkpoints/ (every train.checkpoint_every steps;
a killed run resumes from the last one with the same data order), model.keras
(the best model by validation error on verified classes, never overwritten by
a worse one), metrics.json, logs/ (TensorBoard). Only the chief writes them.
"""

from __future__ import annotations

import json
import os
import time

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from cleannet_tf import checkpointing, datasets, distribute, extract_lib, losses, metrics, train_data
from cleannet_tf.model import build_cleannet, encode_classes, query_encoder_of, reference_encoder_of
from cleannet_tf.references import ReferenceSets, references_path

ENCODINGS = ("per_class", "per_sample")


def cleannet_dir(workdir: str) -> str:
    return os.path.join(workdir, "cleannet")


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


def score_pool_rows(model: keras.Model, data: train_data.TrainingData, references: np.ndarray, rows: np.ndarray,
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
        own = similarity[np.arange(len(chunk)), data.labels[chunk]]
        if margin:
            similarity[np.arange(len(chunk)), data.labels[chunk]] = -np.inf
            own = own - similarity.max(axis=1)
        scores.append(own.astype(np.float32))
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


def validation_metrics(scores: np.ndarray, data: train_data.TrainingData) -> dict:
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


def _make_train_step(model, optimizer, references, strategy, *, global_batch: int, encoding: str,
                     weights: losses.LossWeights):
    query_encoder, reference_encoder = query_encoder_of(model), reference_encoder_of(model)

    def replica_step(batch):
        use_negatives = weights.other_class_weight > 0
        with tf.GradientTape() as tape:
            query = query_encoder(batch["query_features"], training=True)
            labels = batch["label"]
            if use_negatives:
                labels = tf.concat([labels, batch["negative_label"]], axis=0)
            if encoding == "per_class":  # each distinct class of the batch once
                classes, index = tf.unique(labels)
                class_embedding = reference_encoder(tf.gather(references, classes), training=True)["class_embedding"]
                class_embedding = tf.gather(class_embedding, index)
            else:  # the paper's: every sample carries its own copy of its class's reference set
                class_embedding = reference_encoder(tf.gather(references, labels), training=True)["class_embedding"]
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
            loss = tf.nn.compute_average_loss(per_sample, global_batch_size=global_batch)
            regularization = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
            loss += tf.nn.scale_regularization_loss(regularization)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        verified = batch["is_verified"]
        wrong = tf.cast((score >= 0.1) != (batch["verification_label"] > 0), tf.float32) * verified
        return {"loss": loss, "regularization": regularization / strategy.num_replicas_in_sync,
                "verified_error_sum": tf.reduce_sum(wrong), "verified_count": tf.reduce_sum(verified)}

    @tf.function
    def train_step(iterator):
        outputs = strategy.run(replica_step, args=(next(iterator),))
        return {name: strategy.reduce("SUM", value, axis=None) for name, value in outputs.items()}

    return train_step


def train_cleannet(data: train_data.TrainingData, reference_sets: ReferenceSets, config: ml_collections.ConfigDict,
                   output_dir: str, *, strategy: tf.distribute.Strategy | None = None, encoding: str = "per_class",
                   progress: bool = True) -> tuple[keras.Model, dict]:
    """Trains CleanNet; resumes from output_dir/checkpoints when there is one.

    Args:
        data: rows and features (see train_data.prepare_training_data).
        reference_sets: (C, K, D) reference sets.
        config: the full config (cleannet, loss, train, seed).
        output_dir: WORKDIR/cleannet.
        encoding: "per_class" (each distinct class of a batch encoded once) or
            "per_sample" (the paper's; one reference-set copy per sample).

    Returns:
        (the model after the last step, the contents of metrics.json).
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}. Received: {encoding!r}")
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    global_batch = config.train.batch_size
    half = global_batch // 2
    if half % replicas:
        raise ValueError(f"train.batch_size / 2 = {half} must be divisible by the {replicas} replicas.")
    chief = distribute.is_chief(strategy)
    write_dir = checkpointing.worker_output_dir(strategy, output_dir)
    steps = config.train.steps

    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_model_from_config(config, data.feature_dim, reference_sets.references.shape[1])
        optimizer = build_optimizer(config.train)
        optimizer.build(model.trainable_variables)  # slots now, not lazily inside the replica function
        references = tf.Variable(reference_sets.references, trainable=False, name="references")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = checkpointing.restore_latest(checkpoint, os.path.join(write_dir, "checkpoints"))
    start_step = int(optimizer.iterations.numpy())

    metrics_path = os.path.join(output_dir, "metrics.json")
    state = {"history": [], "best": None, "best_step": None}
    if start_step and os.path.exists(metrics_path):
        with open(metrics_path) as f:
            previous = json.load(f)
        state["history"] = [h for h in previous.get("history", []) if h["step"] <= start_step]
        evaluated = [h for h in state["history"] if "val" in h]
        if evaluated:
            best = min(evaluated, key=lambda h: (h["val"]["detection_error"], h["step"]))
            state["best"], state["best_step"] = best["val"], best["step"]

    sampler = train_data.StepSampler(data, verified_per_step=half, unverified_per_step=half, seed=config.seed)

    def dataset_fn(context: tf.distribute.InputContext):
        per_pipeline = replicas // context.num_input_pipelines
        first = context.input_pipeline_id * per_pipeline
        return train_data.make_train_dataset(data, sampler, start_step=start_step, num_steps=steps,
                                             num_replicas=replicas, replica_ids=range(first, first + per_pipeline))

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    train_step = _make_train_step(model, optimizer, references, strategy, global_batch=global_batch,
                                  encoding=encoding, weights=losses.LossWeights.from_config(config.loss))
    writer = tf.summary.create_file_writer(os.path.join(write_dir, "logs"))
    window = {"loss": 0.0, "errors": 0.0, "count": 0.0, "steps": 0, "start": time.perf_counter()}
    samples_per_second = None
    logging.info("Training CleanNet from step %d to %d: %d replica(s), batch %d (+%d), %s encoding.",
                 start_step, steps, replicas, half, half, encoding)

    def evaluate(step: int) -> dict:
        scores = score_pool_rows(model, data, reference_sets.references, data.validation,
                                 margin=config.cleannet.mode in ("robust", "stacked"))
        return validation_metrics(scores, data)

    step = start_step
    while step < steps:
        logs = train_step(iterator)
        step += 1
        window["loss"] += float(logs["loss"])
        window["errors"] += float(logs["verified_error_sum"])
        window["count"] += float(logs["verified_count"])
        window["steps"] += 1
        entry = None
        if step % config.train.log_every == 0 or step == steps:
            elapsed = time.perf_counter() - window["start"]
            samples_per_second = window["steps"] * global_batch / max(elapsed, 1e-9)
            entry = {"step": step, "loss": window["loss"] / window["steps"],
                     "train_error_at_0.1": window["errors"] / max(window["count"], 1.0),
                     "learning_rate": float(optimizer.learning_rate), "samples_per_second": samples_per_second}
            logging.info("step %d: loss %.4f, train error %.3f, lr %.4g, %.0f samples/s", step, entry["loss"],
                         entry["train_error_at_0.1"], entry["learning_rate"], samples_per_second)
            with writer.as_default(step=step):
                tf.summary.scalar("train/loss", entry["loss"])
                tf.summary.scalar("train/error_at_0.1", entry["train_error_at_0.1"])
                tf.summary.scalar("train/learning_rate", entry["learning_rate"])
                tf.summary.scalar("train/steps_per_second", samples_per_second / global_batch)
            window = {"loss": 0.0, "errors": 0.0, "count": 0.0, "steps": 0, "start": time.perf_counter()}
        if len(data.validation) and (step % config.train.eval_every == 0 or step == steps):
            entry = entry or {"step": step}
            entry["val"] = evaluate(step)
            val = entry["val"]
            if val.get("n_val"):
                logging.info("step %d: validation error %.4f at threshold %.3f, ROC-AUC %.4f; held-out error %s",
                             step, val["detection_error"], val["threshold"], val["roc_auc"],
                             val["detection_error_heldout"])
                with writer.as_default(step=step):
                    tf.summary.scalar("val/detection_error", val["detection_error"])
                    tf.summary.scalar("val/roc_auc", val["roc_auc"])
                    if val["detection_error_heldout"] is not None:
                        tf.summary.scalar("val/detection_error_heldout", val["detection_error_heldout"])
                if state["best"] is None or val["detection_error"] < state["best"]["detection_error"]:
                    state["best"], state["best_step"] = val, step
                    if chief:
                        checkpointing.save_model(model, os.path.join(output_dir, "model.keras"))
        if step % config.train.checkpoint_every == 0 or step == steps:
            manager.save(checkpoint_number=step)
        if entry is not None:
            state["history"].append(entry)
            if chief:
                payload = _metrics_payload(state, config, encoding, step, samples_per_second)
                checkpointing.write_json(metrics_path, payload)
    if chief and not len(data.validation):
        checkpointing.save_model(model, os.path.join(output_dir, "model.keras"))
    writer.flush()
    payload = _metrics_payload(state, config, encoding, step, samples_per_second)
    if chief:
        checkpointing.write_json(metrics_path, payload)
    return model, payload


def _metrics_payload(state, config, encoding, step, samples_per_second) -> dict:
    best = state["best"] or {}
    return {"mode": config.cleannet.mode, "encoding": encoding, "step": step, "steps": config.train.steps,
            "best_step": state["best_step"], "threshold": best.get("threshold"),
            "detection_error": best.get("detection_error"), "roc_auc": best.get("roc_auc"),
            "detection_error_heldout": best.get("detection_error_heldout"),
            "roc_auc_heldout": best.get("roc_auc_heldout"), "n_val": best.get("n_val", 0),
            "samples_per_second": samples_per_second, "best": best, "history": state["history"]}


def pick_calibration_classes(verified_labels: np.ndarray, num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """(C,) bool: a seeded `fraction` of the classes in `verified_labels` (labels of verified training rows)."""
    calibration = np.zeros(num_classes, bool)
    candidates = np.unique(verified_labels)
    if fraction <= 0 or len(candidates) < 2:
        return calibration
    count = min(len(candidates) - 1, max(1, round(fraction * len(candidates))))
    calibration[np.random.default_rng([seed, 0xCA11]).choice(candidates, count, replace=False)] = True
    return calibration


def calibration_classes(table: datasets.LabelTable, fraction: float, seed: int) -> np.ndarray:
    """(C,) bool: the verified classes whose verification labels CleanNet does not train on (a seeded draw).

    With cleannet.mode=stacked, cleannet-verify fits its score combination on these classes' verified rows,
    where CleanNet behaves as on classes nobody verified. fraction 0: none.
    """
    verified = (table.verification >= 0) & (table.split == datasets.SPLIT_TRAIN)
    verified_labels = table.labels[verified & ~table.heldout_classes[table.labels]]
    return pick_calibration_classes(verified_labels, table.num_classes, fraction, seed)


def load_training_inputs(config: ml_collections.ConfigDict, workdir: str,
                         table: datasets.LabelTable | None = None, *,
                         for_training: bool = False) -> tuple[train_data.TrainingData, ReferenceSets]:
    """The table, features and reference sets the earlier steps wrote, checked.

    for_training: the calibration classes (cleannet.calibration_fraction) lose their verified train rows and
    count as held out, as CleanNet must not see them.
    """
    table = table if table is not None else datasets.load_table(config, workdir)
    if for_training and config.cleannet.calibration_fraction > 0:
        table = datasets.apply_heldout(table, calibration_classes(table, config.cleannet.calibration_fraction,
                                                                  config.seed))
    features = extract_lib.open_features(config, workdir, table)
    reference_sets = ReferenceSets.load(references_path(workdir))
    data = train_data.prepare_training_data(table, features, reference_sets.class_names,
                                            reference_sets.references.shape[2], reference_sets.counts)
    return data, reference_sets


def run_train(config: ml_collections.ConfigDict, workdir: str, *, strategy: tf.distribute.Strategy | None = None,
              table: datasets.LabelTable | None = None, progress: bool = True) -> dict:
    """cleannet-train: trains CleanNet on WORKDIR's features and reference sets -> WORKDIR/cleannet/."""
    data, reference_sets = load_training_inputs(config, workdir, table, for_training=True)
    _, payload = train_cleannet(data, reference_sets, config, cleannet_dir(workdir), strategy=strategy,
                                encoding=config.cleannet.encoding, progress=progress)
    return payload
