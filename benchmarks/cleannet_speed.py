"""CleanNet speed at paper dimensions (D=2048, K=32, batch 32+32).

    python benchmarks/cleannet_speed.py
    python benchmarks/cleannet_speed.py --classes=14 --train_steps=100

Prints:
- training samples/s with per-class encoding (each distinct class of a batch
  encoded once) against the paper's per-sample encoding (one reference-set copy
  per sample), through the real training step of train_lib;
- scoring samples/s with cached class embeddings (query encoder + one dot
  product) against a plain NumPy forward pass of the same layer shapes, the
  physical limit of this machine for that arithmetic.
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from cleannet_tf import config as config_lib
from cleannet_tf import ops
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model.cleannet import encode_classes, query_encoder_of
from cleannet_tf.training import cleannet, pool

_CLASSES = flags.DEFINE_integer("classes", 101, "Classes (101 as Food-101N; 14 as Clothing1M).")
_STEPS = flags.DEFINE_integer("train_steps", 60, "Timed training steps per encoding.")
_SCORE_ROWS = flags.DEFINE_integer("score_rows", 65536, "Rows scored in the scoring benchmark.")
_SCORE_BATCH = flags.DEFINE_integer("score_batch", 1024, "Scoring batch size.")
_FEATURE_DIM, _NUM_REFS = 2048, 32


def _data(num_classes: int, rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.gamma(0.5, 1.0, (rows, _FEATURE_DIM)).astype(np.float32)
    labels = rng.integers(num_classes, size=rows).astype(np.int32)
    verification = np.where(rng.random(rows) < 0.3, (rng.random(rows) < 0.8).astype(np.int8), -1).astype(np.int8)
    split = np.zeros(rows, np.int8)
    data = pool.TrainingData(
        features=features, labels=labels, verification=verification, table_rows=np.arange(rows),
        verified_train=np.nonzero(verification >= 0)[0], validation=np.zeros(0, np.int64),
        heldout_classes=np.zeros(num_classes, bool), class_names=tuple(f"c{i}" for i in range(num_classes)))
    del split
    references = ReferenceSets(
        references=rng.gamma(0.5, 1.0, (num_classes, _NUM_REFS, _FEATURE_DIM)).astype(np.float32),
        counts=np.full(num_classes, _NUM_REFS, np.int32), class_names=data.class_names,
        num_images=np.full(num_classes, rows // num_classes))
    return data, references


def time_training(data, references, encoding: str, steps: int) -> float:
    config = config_lib.default_config()
    config.train.log_every = 10**9
    config.train.eval_every = 10**9
    config.train.checkpoint_every = 10**9
    warmup = 5
    with tempfile.TemporaryDirectory() as directory:
        config.train.steps = warmup
        cleannet.train_cleannet(data, references, config, os.path.join(directory, "w"), encoding=encoding,
                                 progress=False)
        config.train.steps = warmup + steps
        start = time.perf_counter()
        cleannet.train_cleannet(data, references, config, os.path.join(directory, "t"), encoding=encoding,
                                 progress=False)
        seconds = time.perf_counter() - start
    # The second run also traced and ran `warmup` steps; subtract them at the measured rate.
    return (warmup + steps) * config.train.batch_size / seconds


def numpy_forward(weights, features, class_table, labels):
    """The same arithmetic as cached scoring, in NumPy: ln(1+x), 2 tanh layers, cosine."""
    (w1, b1), (w2, b2) = weights
    hidden = np.tanh(ops.signed_log1p(features) @ w1 + b1)
    query = np.tanh(hidden @ w2 + b2)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return np.einsum("be,be->b", query, class_table[labels])


def time_scoring(data, references, rows: int, batch: int) -> tuple[float, float]:
    config = config_lib.default_config()
    model = cleannet.build_model_from_config(config, _FEATURE_DIM, _NUM_REFS)
    table = tf.math.l2_normalize(encode_classes(model, references.references), axis=-1)
    encoder = query_encoder_of(model)
    features = data.features[np.arange(rows) % len(data.features)]
    labels = data.labels[np.arange(rows) % len(data.labels)]

    @tf.function(input_signature=[tf.TensorSpec([None, _FEATURE_DIM], tf.float32), tf.TensorSpec([None], tf.int32)])
    def score(batch_features, batch_labels):
        query = tf.math.l2_normalize(encoder(batch_features, training=False)["query_embedding"], axis=-1)
        return tf.reduce_sum(query * tf.gather(table, batch_labels), axis=-1)

    score(features[:batch], labels[:batch])
    start = time.perf_counter()
    for i in range(0, rows, batch):
        score(features[i:i + batch], labels[i:i + batch]).numpy()
    tf_rate = rows / (time.perf_counter() - start)

    # Only the layers scoring needs: encoder_hidden and query_embedding.
    layers = [encoder.get_layer("encoder_hidden"), encoder.get_layer("query_embedding")]
    weights = [(np.asarray(layer.kernel), np.asarray(layer.bias)) for layer in layers]
    np_table = np.asarray(table)
    numpy_forward(weights, features[:batch], np_table, labels[:batch])
    start = time.perf_counter()
    for i in range(0, rows, batch):
        numpy_forward(weights, features[i:i + batch], np_table, labels[i:i + batch])
    numpy_rate = rows / (time.perf_counter() - start)
    return tf_rate, numpy_rate


def main(argv):
    del argv
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; D={_FEATURE_DIM}, K={_NUM_REFS}, "
          f"batch 32+32, {_CLASSES.value} classes")
    data, references = _data(_CLASSES.value, 20000)
    per_class = time_training(data, references, "per_class", _STEPS.value)
    per_sample = time_training(data, references, "per_sample", _STEPS.value)
    tf_rate, numpy_rate = time_scoring(data, references, _SCORE_ROWS.value, _SCORE_BATCH.value)
    print()
    print("| what | samples/s | ratio |")
    print("|---|---|---|")
    print(f"| training, per-class encoding ({_CLASSES.value} classes) | {per_class:.0f} | "
          f"{per_class / per_sample:.2f}x per-sample |")
    print(f"| training, per-sample encoding (paper) | {per_sample:.0f} | 1.00 |")
    print(f"| scoring with cached class embeddings (batch {_SCORE_BATCH.value}) | {tf_rate:.0f} | "
          f"{tf_rate / numpy_rate:.2f}x NumPy |")
    print(f"| NumPy forward of the same layer shapes | {numpy_rate:.0f} | 1.00 |")


if __name__ == "__main__":
    app.run(main)
