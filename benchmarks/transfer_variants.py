"""benchmarks/transfer.py's methods: cleanlab's probabilities, CleanNet through the library, and the
mass-aware variant (a task on the package's training loop).
"""

from __future__ import annotations

import copy
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.transfer_setting import ROBUST_CORE_FRACTION, Setting
from cleannet_tf import ops
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model.cleannet import encode_classes, query_encoder_of, reference_encoder_of  # noqa: E402
from cleannet_tf.training import cleannet
from cleannet_tf.training import pool as training_pool


def cleanlab_probabilities(data: training_pool.TrainingData, seed: int) -> np.ndarray:
    """(P, C) out-of-fold probabilities of sklearn LogisticRegression on ln(1+x) features (ops), 5 folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x = ops.signed_log1p(data.features)
    return cross_val_predict(LogisticRegression(max_iter=500), x, data.labels, method="predict_proba",
                             cv=StratifiedKFold(5, shuffle=True, random_state=seed))



def cleannet_similarities(model: keras.Model, features: np.ndarray, references: np.ndarray,
                          log_mass: np.ndarray | None = None) -> np.ndarray:
    """(P, C) cosine of every image's query embedding to every class embedding (dropout off)."""
    if log_mass is None:
        classes = encode_classes(model, references).numpy()
    else:
        classes = encode_references(model, tf.constant(references), tf.constant(log_mass, tf.float32),
                                    training=False).numpy()
    classes /= np.maximum(np.linalg.norm(classes, axis=1, keepdims=True), 1e-12)
    query = query_encoder_of(model)(features, training=False)["query_embedding"].numpy()
    query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    return query @ classes.T



def run_config(setting: Setting, *, steps: int, dropout: float, seed: int):
    """The setting's config for one CleanNet run: lr decay at half, evaluation every 500 (1000 past 5k) steps."""
    config = copy.deepcopy(setting.config)
    config.seed = seed
    config.train.steps = steps
    config.train.lr_decay_steps = max(1, steps // 2)
    config.train.eval_every = 500 if steps <= 5000 else 1000
    config.train.checkpoint_every = steps
    config.cleannet.dropout_rate = dropout
    return config



def train_best(setting: Setting, reference_sets: ReferenceSets, config, *, task=None,
               log_mass: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """train_lib.train_cleannet in a temporary folder; (P, C) similarities of its best model, seconds."""
    with tempfile.TemporaryDirectory(prefix="transfer-cleannet-") as output_dir:
        start = time.perf_counter()
        cleannet.train_cleannet(setting.data, reference_sets, config, output_dir, progress=False, task=task)
        seconds = time.perf_counter() - start
        model = keras.models.load_model(os.path.join(output_dir, "model.keras"))
    return cleannet_similarities(model, setting.data.features, reference_sets.references, log_mass), seconds



def train_library(setting: Setting, *, mode: str, steps: int, dropout: float, seed: int) -> tuple[np.ndarray, float]:
    """The library's train_cleannet; (P, C) similarities of its best model.

    mode "paper": k-means on every image, best step by the cosine score's error (the method as published);
    "robust": k-means on each class's core (refs.core_fraction), best step by the margin score's error.
    """
    config = run_config(setting, steps=steps, dropout=dropout, seed=seed)
    config.cleannet.mode = mode
    config.refs.core_fraction = 1.0 if mode == "paper" else ROBUST_CORE_FRACTION
    return train_best(setting, setting.reference_sets if mode == "paper" else setting.core_reference_sets, config)



def reference_masses(data: training_pool.TrainingData, references: np.ndarray) -> np.ndarray:
    """(C, K) cluster sizes: pool images of class c whose nearest centre (squared L2, as k-means) is slot k.

    Repeated slots (classes with fewer than K distinct images) share their vector's images.
    """
    masses = np.zeros(references.shape[:2], np.float64)
    for c in range(references.shape[0]):
        x = data.features[data.labels == c]
        centres = references[c]
        distances = (x ** 2).sum(1)[:, None] - 2 * x @ centres.T + (centres ** 2).sum(1)[None]
        nearest = distances.argmin(axis=1)
        _, distinct, copies = np.unique(centres, axis=0, return_inverse=True, return_counts=True)
        counts = np.bincount(nearest, minlength=len(centres)).astype(np.float64)
        for slot in range(len(centres)):  # split each distinct vector's images over its copies
            same = distinct == distinct[slot]
            masses[c, slot] = counts[same].sum() / copies[distinct[slot]]
    return masses



def encode_references(model: keras.Model, references, log_mass, *, training: bool):
    """The reference encoder with an additive attention bias: (B, K, D), (B, K) -> class embeddings (B, E).

    Same layers and weights as the model's reference encoder; attention logits e_i = u_i . c + log_mass_i.
    With log_mass = 0 this is exactly the paper's encoder.
    """
    encoder = reference_encoder_of(model)
    hidden = encoder.get_layer("feature_normalization")(references)
    hidden = encoder.get_layer("reference_hidden")(hidden)
    if any(layer.name == "reference_dropout" for layer in encoder.layers):
        hidden = encoder.get_layer("reference_dropout")(hidden, training=training)
    values = encoder.get_layer("reference_values")(hidden)
    keys = encoder.get_layer("reference_keys")(values)
    logits = tf.einsum("bka,a->bk", keys, encoder.get_layer("attention_pooling").context) + log_mass
    attention = tf.nn.softmax(logits, axis=-1)
    return encoder.get_layer("class_embedding")(tf.einsum("bk,bkh->bh", attention, values))



class MassAwareTask(cleannet.CleanNetTask):
    """CleanNetTask whose reference encoder adds an attention bias log_mass (C, K); best step by the cosine."""

    def __init__(self, setting: Setting, references: np.ndarray, log_mass: np.ndarray, config):
        counts = np.full(len(references), references.shape[1], np.int32)
        reference_sets = ReferenceSets(references, counts, setting.data.class_names,
                                       np.zeros(len(references), np.int64))
        super().__init__(setting.data, reference_sets, config, encoding="per_class")
        self.log_mass = log_mass.astype(np.float32)

    def build(self) -> None:
        super().build()
        self.log_mass_t = tf.constant(self.log_mass)

    def class_embeddings(self, classes, *, training: bool):
        return encode_references(self.model, tf.gather(self.references, classes),
                                 tf.gather(self.log_mass_t, classes), training=training)

    def pool_scores(self, rows: np.ndarray) -> np.ndarray:
        similarities = cleannet_similarities(self.model, self.data.features[rows], self.reference_sets.references,
                                             self.log_mass)
        return own(similarities, self.data.labels[rows])



def train_variant(setting: Setting, references: np.ndarray, log_mass: np.ndarray, *, steps: int, dropout: float,
                  seed: int) -> tuple[np.ndarray, float]:
    """The package's training loop (train_lib.train_cleannet: one device, per-class encoding, same sampler,
    losses, optimiser and best-step selection) on other reference sets (C, K, D) and with an attention bias
    log_mass (C, K); (P, C) similarities of the best step. With the library's references and log_mass = 0 it is
    train_lib.train_cleannet in mode "paper"."""
    config = run_config(setting, steps=steps, dropout=dropout, seed=seed)
    task = MassAwareTask(setting, references, log_mass, config)
    return train_best(setting, task.reference_sets, config, task=task, log_mass=log_mass)


def own(similarities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return ops.own_and_margin(similarities, labels)[0]
