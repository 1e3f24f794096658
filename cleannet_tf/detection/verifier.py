"""The verifier: one functional Keras model that checks (features, label) pairs with a trained CleanNet.

    features (B, D) ─ query encoder ─► query_embedding (B, E) ─┐
              └──────────────── log + L2 normalisation ────────┴─ VerificationHead ─► score, is_noisy,
    label (B,) ─────────────────────────────────────────────────┘     weight_soft, suggested_label, suggested_score

The head holds the cached class embeddings (C, E) of the CleanNet reference encoder, the robust class means
(C, D) of the normalised features, a linear classifier (D, C) of the noisy labels, an index of up to
INDEX_ROWS pool images (their normalised features (M, D) and labels (M,)) for the kNN signal, the threshold,
and the score combination, so scoring costs the query encoder and a few matrix products (B x M for the kNN
signal, computed only when its weight is not 0). It computes a (B, C) score of every image against every class; the
score of the pair is the entry of its label, the suggested label the best entry.

Scorings (`cleannet.mode` picks one):
    cosine   cos(query embedding, class embedding): the paper's score (mode "paper")
    margin   cosine minus the best cosine of another class (mode "robust")
    stacked  2 P(label correct) - 1, P a logistic regression over signals that mean the same in every class,
             fitted on verified_train rows (mode "stacked"): the CleanNet cosine and margin, and the cosine
             and margin of the features to the robust class means (the mean of each class's clean core,
             `detectors.robust_class_means`), the score and margin of the linear classifier
             (`detectors.linear_classifier`), and the kNN label agreement (share of the KNN_K most similar index
             images that carry the class). Classes without verification labels are scored by the same weights.

What a new image gets at serving time: every signal is computed in the graph, as for the pool's images (the
classifier is the fit on the whole pool). The kNN index is
the pool (a fixed sample of INDEX_ROWS images above that: memory M x D floats in the model); an index image
identical to the query (cosine >= 1 - 1e-5: the image itself, or an exact duplicate) is not its neighbour, so a
pool image scored by the served model gets the same agreement as in scores.tsv.

All scores lie in [-1, 1] (margin in [-2, 2]); low means the label is likely wrong; a pair is noisy when
score < threshold. weight_soft is the calibrated P(label correct) of scores.tsv: sigmoid(a x + b) with the
head's Platt calibration (a, b) (calibration.fit_calibration; x the stacked logit log((1 + s) / (1 - s)), or
the margin), without one (s + 1) / 2 for stacked; for cosine (mode "paper") and an uncalibrated margin, the
paper's max(0, s) = clip(s, 0, 1).

Imports `model`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from cleannet_tf.model import layers
from cleannet_tf.model.cleannet import query_encoder_of

SCORINGS = ("cosine", "margin", "stacked")
SIGNAL_NAMES = ("cleannet_cosine", "cleannet_margin", "class_mean_cosine", "class_mean_margin", "classifier_score",
                "classifier_margin", "knn_agreement")
CLEANNET_SIGNALS = ("cleannet_cosine", "cleannet_margin")  # the signals of CleanNet's learned embedding
KNN_K = 10  # neighbours of the knn_agreement signal
INDEX_ROWS = 20_000  # largest kNN index stored in the verifier (a fixed sample of a larger pool)
SELF_COSINE = 1.0 - 1e-5  # an index row at least this similar to the query is the query itself
STACKED_TEMPERATURE = 1.0  # score = 2 sigmoid(logit / T) - 1


def _margin_to_best_other(similarity: tf.Tensor) -> tf.Tensor:
    """(B, C) -> (B, C): each entry minus the best entry of another class in its row."""
    top = tf.math.top_k(similarity, k=2).values  # (B, 2)
    is_best = tf.one_hot(tf.argmax(similarity, axis=1), tf.shape(similarity)[1], on_value=True, off_value=False)
    best_other = tf.where(is_best, top[:, 1:2], top[:, 0:1])
    return similarity - best_other


def log_l2_normalize(features: tf.Tensor) -> tf.Tensor:
    """layers.signed_log1p, then unit L2 rows (ops.log_normalize in the graph): (B, D) -> (B, D)."""
    x = layers.signed_log1p(features)
    return tf.math.l2_normalize(x, axis=-1, epsilon=1e-24)


@keras.saving.register_keras_serializable(package="cleannet_tf")
class VerificationHead(keras.layers.Layer):
    """Scores (features, query embedding, label) against every class; see the module docstring.

    Args:
        num_classes: C. embed_dim: E. feature_dim: D.
        scoring: "cosine", "margin" or "stacked".
        threshold: float. A pair is noisy when its score is below it (unless class_thresholds).
        class_thresholds: optional (C,) floats: a pair of class c is noisy when its score is below
            class_thresholds[c] (the calibrated operating point, detection/operating_point.py).
        signal_weights: floats in SIGNAL_NAMES order (missing trailing ones are 0) and signal_bias: float, the
            logistic regression of "stacked" on raw (unstandardised) signals.
        index_rows: M, rows of the kNN index (0: none; then knn_agreement must have weight 0).
        calibration: optional (a, b), Platt scaling of P(label correct) (calibration.fit_calibration with this
            scoring): weight_soft = P (see the module docstring).

    Weights (not trained): class_embeddings (C, E), class_means (C, D) unit rows, classifier_weights (D, C) and
    classifier_bias (C,), index_features (M, D) unit rows and index_labels (M,) (class ids as floats).
    Call: features (B, D), query_embedding (B, E), label (B,) int -> dict of score (B,) float32,
    is_noisy (B,) bool, weight_soft (B,) float32, suggested_label (B,) int64, suggested_score (B,) float32.
    """

    def __init__(self, num_classes: int, embed_dim: int, feature_dim: int, *, scoring: str, threshold: float,
                 signal_weights=(0.0, 0.0, 0.0, 0.0), signal_bias: float = 0.0, index_rows: int = 0,
                 calibration=None, class_thresholds=None, **kwargs):
        super().__init__(**kwargs)
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}. Received: scoring={scoring!r}")
        if len(signal_weights) > len(SIGNAL_NAMES):
            raise ValueError(f"signal_weights takes at most {len(SIGNAL_NAMES)} values ({SIGNAL_NAMES}). "
                             f"Received {signal_weights!r}")
        self.num_classes, self.embed_dim, self.feature_dim = int(num_classes), int(embed_dim), int(feature_dim)
        self.scoring = scoring
        self.threshold = float(threshold)
        if class_thresholds is not None and len(class_thresholds) != num_classes:
            raise ValueError(f"class_thresholds must hold {num_classes} values. Received {len(class_thresholds)}")
        self.class_thresholds = None if class_thresholds is None else tuple(float(t) for t in class_thresholds)
        weights = [float(w) for w in signal_weights]
        self.signal_weights = tuple(weights + [0.0] * (len(SIGNAL_NAMES) - len(weights)))
        self.signal_bias = float(signal_bias)
        self.index_rows = int(index_rows)
        if calibration is not None and len(calibration) != 2:
            raise ValueError(f"calibration must be (a, b) or None. Received {calibration!r}")
        self.calibration = None if calibration is None else (float(calibration[0]), float(calibration[1]))
        if self.signal_weights[SIGNAL_NAMES.index("knn_agreement")] and not self.index_rows:
            raise ValueError("The knn_agreement signal needs a kNN index (index_rows > 0).")
        self.class_embeddings = self.add_weight(shape=(self.num_classes, self.embed_dim), initializer="zeros",
                                                trainable=False, name="class_embeddings")
        self.class_means = self.add_weight(shape=(self.num_classes, self.feature_dim), initializer="zeros",
                                           trainable=False, name="class_means")
        self.classifier_weights = self.add_weight(shape=(self.feature_dim, self.num_classes), initializer="zeros",
                                                  trainable=False, name="classifier_weights")
        self.classifier_bias = self.add_weight(shape=(self.num_classes,), initializer="zeros", trainable=False,
                                               name="classifier_bias")
        self.index_features = self.add_weight(shape=(self.index_rows, self.feature_dim), initializer="zeros",
                                              trainable=False, name="index_features")
        self.index_labels = self.add_weight(shape=(self.index_rows,), initializer="zeros", trainable=False,
                                            name="index_labels")

    def used_signals(self) -> tuple[str, ...]:
        """The SIGNAL_NAMES the score needs."""
        if self.scoring == "cosine":
            return ("cleannet_cosine",)
        if self.scoring == "margin":
            return ("cleannet_margin",)
        return tuple(name for name, w in zip(SIGNAL_NAMES, self.signal_weights, strict=True) if w)

    def knn_agreement(self, x) -> tf.Tensor:
        """(B, D) unit rows -> (B, C): share of the KNN_K most similar index rows (not the query itself) per class."""
        similarity = tf.matmul(x, tf.convert_to_tensor(self.index_features), transpose_b=True)  # (B, M)
        similarity = tf.where(similarity >= SELF_COSINE, -2.0 * tf.ones_like(similarity), similarity)
        nearest = tf.math.top_k(similarity, k=min(KNN_K, self.index_rows)).indices  # (B, k)
        labels = tf.cast(tf.gather(tf.convert_to_tensor(self.index_labels), nearest), tf.int32)
        return tf.reduce_mean(tf.one_hot(labels, self.num_classes), axis=1)

    def signals(self, features, query_embedding, names=SIGNAL_NAMES) -> dict[str, tf.Tensor]:
        """The (B, C) signal matrices of `names` (SIGNAL_NAMES)."""
        out = {}
        if {"cleannet_cosine", "cleannet_margin"} & set(names):
            query = tf.math.l2_normalize(query_embedding, axis=-1, epsilon=1e-24)
            classes = tf.math.l2_normalize(tf.convert_to_tensor(self.class_embeddings), axis=-1, epsilon=1e-24)
            out["cleannet_cosine"] = tf.matmul(query, classes, transpose_b=True)
            out["cleannet_margin"] = _margin_to_best_other(out["cleannet_cosine"])
        x = log_l2_normalize(features)
        if {"class_mean_cosine", "class_mean_margin"} & set(names):
            out["class_mean_cosine"] = tf.matmul(x, tf.convert_to_tensor(self.class_means), transpose_b=True)
            out["class_mean_margin"] = _margin_to_best_other(out["class_mean_cosine"])
        if {"classifier_score", "classifier_margin"} & set(names):
            out["classifier_score"] = (tf.matmul(x, tf.convert_to_tensor(self.classifier_weights))
                                       + tf.convert_to_tensor(self.classifier_bias))
            out["classifier_margin"] = _margin_to_best_other(out["classifier_score"])
        if "knn_agreement" in names:
            if not self.index_rows:
                raise ValueError("The knn_agreement signal needs a kNN index (index_rows > 0).")
            out["knn_agreement"] = self.knn_agreement(x)
        return {name: out[name] for name in names}

    def logits(self, features, query_embedding) -> tf.Tensor:
        """(B, D), (B, E) -> (B, C) stacked logit (unbounded: it ranks where the score saturates at -1 or 1); the
        score itself for the cosine and margin scorings."""
        if self.scoring != "stacked":
            return self.class_scores(features, query_embedding)
        signals = self.signals(features, query_embedding, self.used_signals())
        weights = dict(zip(SIGNAL_NAMES, self.signal_weights, strict=True))
        constant = tf.zeros((tf.shape(features)[0], self.num_classes)) + self.signal_bias
        return tf.add_n([constant] + [weights[name] * value for name, value in signals.items()])

    def class_scores(self, features, query_embedding) -> tf.Tensor:
        """(B, D), (B, E) -> (B, C) score of every image against every class."""
        if self.scoring == "cosine":
            return self.signals(features, query_embedding, ("cleannet_cosine",))["cleannet_cosine"]
        if self.scoring == "margin":
            return self.signals(features, query_embedding, ("cleannet_margin",))["cleannet_margin"]
        return 2.0 * tf.sigmoid(self.logits(features, query_embedding) / STACKED_TEMPERATURE) - 1.0

    def soft_weight(self, score: tf.Tensor) -> tf.Tensor:
        """(B,) score -> (B,) float32 weight_soft: calibration.correct_probability of the score with this head's
        calibration, computed in float64 like scores.tsv's (clip(s, 0, 1) for cosine, or margin without one)."""
        if self.scoring == "cosine" or (self.scoring == "margin" and self.calibration is None):
            return tf.clip_by_value(score, 0.0, 1.0)
        s = tf.cast(score, tf.float64)
        if self.scoring == "stacked":
            if self.calibration is None:
                return tf.cast(tf.clip_by_value((s + 1.0) / 2.0, 0.0, 1.0), tf.float32)
            clipped = tf.clip_by_value(s, -1.0 + 1e-7, 1.0 - 1e-7)
            s = tf.math.log1p(clipped) - tf.math.log1p(-clipped)
        a, b = self.calibration
        return tf.cast(tf.sigmoid(a * s + b), tf.float32)

    def call(self, features, query_embedding, label):
        label = tf.cast(label, tf.int64)
        tf.debugging.assert_less(label, tf.constant(self.num_classes, tf.int64),
                                 message=f"label must be a class id in [0, {self.num_classes})")
        tf.debugging.assert_non_negative(label, message=f"label must be a class id in [0, {self.num_classes})")
        scores = self.class_scores(tf.cast(features, tf.float32), tf.cast(query_embedding, tf.float32))
        score = tf.gather(scores, label, axis=1, batch_dims=1)
        threshold = self.threshold if self.class_thresholds is None else tf.gather(
            tf.constant(self.class_thresholds, tf.float32), label)
        return {"score": score, "is_noisy": score < threshold, "weight_soft": self.soft_weight(score),
                "suggested_label": tf.argmax(scores, axis=1, output_type=tf.int64),
                "suggested_score": tf.reduce_max(scores, axis=1)}

    def compute_output_spec(self, features, query_embedding, label):
        batch = features.shape[0]
        return {"score": keras.KerasTensor((batch,), "float32"), "is_noisy": keras.KerasTensor((batch,), "bool"),
                "weight_soft": keras.KerasTensor((batch,), "float32"),
                "suggested_label": keras.KerasTensor((batch,), "int64"),
                "suggested_score": keras.KerasTensor((batch,), "float32")}

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "embed_dim": self.embed_dim,
                "feature_dim": self.feature_dim, "scoring": self.scoring, "threshold": self.threshold,
                "signal_weights": list(self.signal_weights), "signal_bias": self.signal_bias,
                "index_rows": self.index_rows,
                "calibration": None if self.calibration is None else list(self.calibration),
                "class_thresholds": None if self.class_thresholds is None else list(self.class_thresholds)}

    def pair_thresholds(self, labels) -> np.ndarray:
        """(N,) float64 threshold of each pair of labels (N,): class_thresholds[label], or the threshold."""
        labels = np.asarray(labels, np.int64)
        if self.class_thresholds is None:
            return np.full(labels.shape, self.threshold)
        return np.asarray(self.class_thresholds, np.float64)[labels]


def build_verifier(cleannet: keras.Model, class_embeddings: np.ndarray, class_means: np.ndarray | None = None, *,
                   scoring: str, threshold: float, signal_weights=(0.0, 0.0, 0.0, 0.0),
                   signal_bias: float = 0.0, classifier: tuple[np.ndarray, np.ndarray] | None = None,
                   index: tuple[np.ndarray, np.ndarray] | None = None, calibration=None,
                   class_thresholds=None) -> keras.Model:
    """The verifier model "cleannet_verifier" of a trained CleanNet.

    Args:
        cleannet: the trained model (build_cleannet); its "query_encoder" sub-model is shared.
        class_embeddings: (C, E) from model.encode_classes.
        class_means: (C, D) unit rows (detectors.robust_class_means of log_normalize'd features); needed by
            "stacked", zeros otherwise.
        scoring, threshold, signal_weights, signal_bias, class_thresholds: see VerificationHead.
        classifier: optional (weights (D, C), bias (C,)) of detectors.linear_classifier (zeros otherwise).
        index: optional kNN index (features (M, D) unit rows, labels (M,) int); M <= INDEX_ROWS keeps the model
            small (detection/fit.py knn_index picks them).
        calibration: optional (a, b) Platt scaling of P(label correct): the weight_soft output (VerificationHead).

    Inputs: "features" (B, D) float32, "label" (B,) int64.
    Outputs: "score", "is_noisy", "weight_soft", "suggested_label", "suggested_score", each (B,).
    """
    query_encoder = query_encoder_of(cleannet)
    feature_dim = int(query_encoder.inputs[0].shape[-1])
    class_embeddings = np.asarray(class_embeddings, np.float32)
    num_classes, embed_dim = class_embeddings.shape
    if class_means is None:
        if scoring == "stacked":
            raise ValueError("scoring='stacked' needs class_means (C, D).")
        class_means = np.zeros((num_classes, feature_dim), np.float32)
    class_means = np.asarray(class_means, np.float32)
    if class_means.shape != (num_classes, feature_dim):
        raise ValueError(f"class_means must be ({num_classes}, {feature_dim}). Received {class_means.shape}")
    features = keras.Input((feature_dim,), name="features", dtype="float32")
    label = keras.Input((), name="label", dtype="int64")
    query_embedding = query_encoder(features)["query_embedding"]
    index_rows = 0 if index is None else len(index[0])
    head = VerificationHead(num_classes, embed_dim, feature_dim, scoring=scoring, threshold=threshold,
                            signal_weights=signal_weights, signal_bias=signal_bias, index_rows=index_rows,
                            calibration=calibration, class_thresholds=class_thresholds, name="verification_head")
    outputs = {name: keras.layers.Identity(name=name)(tensor)
               for name, tensor in head(features, query_embedding, label).items()}
    head.class_embeddings.assign(class_embeddings)
    head.class_means.assign(class_means)
    if classifier is not None:
        head.classifier_weights.assign(np.asarray(classifier[0], np.float32))
        head.classifier_bias.assign(np.asarray(classifier[1], np.float32))
    if index is not None:
        head.index_features.assign(np.asarray(index[0], np.float32))
        head.index_labels.assign(np.asarray(index[1], np.float32))
    return keras.Model({"features": features, "label": label}, outputs, name="cleannet_verifier")


def verification_head_of(verifier: keras.Model) -> VerificationHead:
    return verifier.get_layer("verification_head")


def _batches(verifier: keras.Model, features: np.ndarray, batch_size: int):
    """(head, batch features, query embedding) per batch of rows."""
    head = verification_head_of(verifier)
    encoder = query_encoder_of(verifier)
    for start in range(0, len(features), batch_size):
        batch = tf.convert_to_tensor(features[start:start + batch_size], tf.float32)
        yield head, batch, encoder(batch, training=False)["query_embedding"]


def class_scores(verifier: keras.Model, features: np.ndarray, *, batch_size: int = 4096,
                 logits: bool = False) -> np.ndarray:
    """(N, D) -> (N, C) float32 score of every image against every class (dropout off).

    logits: the stacked scoring's logits instead of its scores (float64; they rank without ties where the
    score saturates).
    """
    chunks = [head.logits(batch, query).numpy().astype(np.float64) if logits else
              head.class_scores(batch, query).numpy()
              for head, batch, query in _batches(verifier, features, batch_size)]
    num_classes = verification_head_of(verifier).num_classes
    return np.concatenate(chunks) if chunks else np.zeros((0, num_classes), np.float32)


def own_label_scores(verifier: keras.Model, features: np.ndarray, labels: np.ndarray, *,
                     batch_size: int = 4096) -> dict[str, np.ndarray]:
    """Per-row figures of (N, D) features and (N,) labels, batch by batch (no (N, C) array; dropout off).

    Returns (N,) arrays: "score" float32 (own label's), "suggested_label" int64 (best class, first of ties),
    "suggested_score" float32, "rank_score" float64 (the own label's stacked logit; the score otherwise):
    the entries class_scores(...) and class_scores(..., logits=True) give.
    """
    n = len(features)
    out = {"score": np.empty(n, np.float32), "suggested_label": np.empty(n, np.int64),
           "suggested_score": np.empty(n, np.float32), "rank_score": np.empty(n, np.float64)}
    for start, (head, batch, query) in zip(range(0, n, batch_size), _batches(verifier, features, batch_size),
                                           strict=True):
        logits = head.logits(batch, query)
        scores = (2.0 * tf.sigmoid(logits / STACKED_TEMPERATURE) - 1.0 if head.scoring == "stacked"
                  else logits).numpy()  # class_scores' formula on the same logits
        rows, own = np.arange(len(scores)), np.asarray(labels[start:start + batch_size], np.int64)
        block = slice(start, start + len(scores))
        out["score"][block] = scores[rows, own]
        out["suggested_label"][block] = suggested = scores.argmax(axis=1)
        out["suggested_score"][block] = scores[rows, suggested]
        out["rank_score"][block] = logits.numpy().astype(np.float64)[rows, own]
    return out


def own_class_signals(verifier: keras.Model, features: np.ndarray, labels: np.ndarray, *, names=SIGNAL_NAMES,
                      batch_size: int = 4096) -> np.ndarray:
    """(N, D), (N,) -> (N, F) float64: the signals `names` (SIGNAL_NAMES) of each image against its own label."""
    chunks = []
    for start, (head, batch, query) in zip(range(0, len(features), batch_size),
                                           _batches(verifier, features, batch_size), strict=True):
        signals = head.signals(batch, query, tuple(names))
        rows = np.arange(len(batch))
        chunks.append(np.stack([signals[name].numpy()[rows, labels[start:start + batch_size]]
                                for name in names], axis=1))
    return np.concatenate(chunks).astype(np.float64) if chunks else np.zeros((0, len(names)))
