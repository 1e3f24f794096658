"""CleanNet (Lee et al., CVPR 2018): the joint embedding, as functional Keras models.

    query_features (B, D) ─ FeatureNormalization ─ query encoder (autoencoder) ─► query_embedding (B, E)
                                                                               └► reconstruction (B, D)
    reference_features (B, K, D) ─ FeatureNormalization ─ per-reference MLP ─ context attention
                                                       ─► class_embedding (B, E)
    score = cos(query_embedding, class_embedding)  (B,)

Paper dimensions: D = 2048, hidden 256, E = 128, reference MLP 512 -> 256,
attention 256; tanh everywhere; dropout only after the 512-unit layer;
L2 weight decay on kernels. 2,396,160 parameters at D = 2048.

The class embedding does not depend on the query, so at evaluation it is
computed once per class (`encode_classes`, a C x E table) and scoring a sample
costs the query encoder and a dot product.

Imports `model.layers`.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from cleannet_tf.model.layers import ContextAttentionPooling, CosineSimilarity, FeatureNormalization, l2_normalize

# cleannet.mode -> how a (features, label) pair is scored: cos(query, class) (the paper's), its margin over the
# best other class, or the stacked P(label correct) of detection/verifier.py.
MODE_SCORING = {"paper": "cosine", "robust": "margin", "stacked": "stacked"}


def _dense(units: int, name: str, weight_decay: float) -> keras.layers.Dense:
    # TF1's l2_regularizer(scale) adds scale * sum(w^2) / 2; Keras L2(l) adds l * sum(w^2).
    return keras.layers.Dense(units, activation="tanh", name=name,
                              kernel_regularizer=keras.regularizers.L2(weight_decay / 2) if weight_decay else None)


def build_query_encoder(feature_dim: int, *, hidden_dim: int = 256, embed_dim: int = 128, feature_norm: str = "log",
                        weight_decay: float = 1e-4) -> keras.Model:
    """Autoencoder: "query_features" (B, D) -> "query_embedding" (B, E), "reconstruction" (B, D),
    "normalized_features" (B, D) (the reconstruction target)."""
    features = keras.Input((feature_dim,), name="query_features")
    normalized = FeatureNormalization(feature_norm, name="feature_normalization")(features)
    hidden = _dense(hidden_dim, "encoder_hidden", weight_decay)(normalized)
    embedding = _dense(embed_dim, "query_embedding", weight_decay)(hidden)
    decoded = _dense(hidden_dim, "decoder_hidden", weight_decay)(embedding)
    reconstruction = _dense(feature_dim, "reconstruction", weight_decay)(decoded)
    normalized = keras.layers.Identity(name="normalized_features")(normalized)
    return keras.Model(features, {"query_embedding": embedding, "reconstruction": reconstruction,
                                  "normalized_features": normalized}, name="query_encoder")


def build_reference_encoder(feature_dim: int, num_references: int | None = None, *, reference_hidden_dim: int = 512,
                            attention_dim: int = 256, embed_dim: int = 128, feature_norm: str = "log",
                            dropout_rate: float = 0.0, weight_decay: float = 1e-4) -> keras.Model:
    """Reference-set encoder: "reference_features" (B, K, D) -> "class_embedding" (B, E), "attention" (B, K)."""
    references = keras.Input((num_references, feature_dim), name="reference_features")
    normalized = FeatureNormalization(feature_norm, name="feature_normalization")(references)
    hidden = _dense(reference_hidden_dim, "reference_hidden", weight_decay)(normalized)
    if dropout_rate:
        hidden = keras.layers.Dropout(dropout_rate, name="reference_dropout")(hidden)
    values = _dense(attention_dim, "reference_values", weight_decay)(hidden)  # h_i
    keys = _dense(attention_dim, "reference_keys", weight_decay)(values)  # u_i
    pooled, attention = ContextAttentionPooling(return_attention=True, name="attention_pooling")(keys, values)
    embedding = _dense(embed_dim, "class_embedding", weight_decay)(pooled)
    attention = keras.layers.Identity(name="attention")(attention)
    return keras.Model(references, {"class_embedding": embedding, "attention": attention}, name="reference_encoder")


def build_cleannet(feature_dim: int = 2048, num_references: int | None = 32, *, query_hidden_dim: int = 256,
                   reference_hidden_dim: int = 512, attention_dim: int = 256, embed_dim: int = 128,
                   feature_norm: str = "log", dropout_rate: float = 0.0, weight_decay: float = 1e-4) -> keras.Model:
    """CleanNet as one functional model (the faithful per-sample path).

    Args:
        feature_dim: int. D, the backbone feature size (2048 for ResNet-50 pool5).
        num_references: int or None. K, references per class (None: any K).
        query_hidden_dim, reference_hidden_dim, attention_dim, embed_dim: ints. Layer widths.
        feature_norm: str. "log" (ln(1+x), the paper's), "l2" or "none".
        dropout_rate: float. Dropout after the reference MLP's first layer.
        weight_decay: float. TF1-style L2 scale on every kernel (loss += wd * sum(w^2) / 2).

    Inputs: "query_features" (B, D), "reference_features" (B, K, D): the
    reference set of each sample's (noisy) class.
    Outputs: "score" (B,) cosine in [-1, 1] (low = label likely wrong),
    "query_embedding" (B, E), "class_embedding" (B, E), "reconstruction" (B, D),
    "normalized_features" (B, D).

    Sub-models "query_encoder" and "reference_encoder" are layers of the result
    (`model.get_layer(...)`), for per-class encoding and cached scoring.

    Example:
        >>> model = build_cleannet(feature_dim=16, num_references=4)
        >>> out = model({"query_features": np.ones((2, 16)), "reference_features": np.ones((2, 4, 16))})
        >>> out["score"].shape  # (2,)
    """
    for name, value in [("feature_dim", feature_dim), ("query_hidden_dim", query_hidden_dim),
                        ("reference_hidden_dim", reference_hidden_dim), ("attention_dim", attention_dim),
                        ("embed_dim", embed_dim)]:
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1). Received: dropout_rate={dropout_rate}")
    query_encoder = build_query_encoder(feature_dim, hidden_dim=query_hidden_dim, embed_dim=embed_dim,
                                        feature_norm=feature_norm, weight_decay=weight_decay)
    reference_encoder = build_reference_encoder(
        feature_dim, num_references, reference_hidden_dim=reference_hidden_dim, attention_dim=attention_dim,
        embed_dim=embed_dim, feature_norm=feature_norm, dropout_rate=dropout_rate, weight_decay=weight_decay)
    query_features = keras.Input((feature_dim,), name="query_features")
    reference_features = keras.Input((num_references, feature_dim), name="reference_features")
    query = query_encoder(query_features)
    reference = reference_encoder(reference_features)
    score = CosineSimilarity(name="score")(query["query_embedding"], reference["class_embedding"])
    outputs = {
        "score": score,
        "query_embedding": keras.layers.Identity(name="query_embedding")(query["query_embedding"]),
        "class_embedding": keras.layers.Identity(name="class_embedding")(reference["class_embedding"]),
        "reconstruction": keras.layers.Identity(name="reconstruction")(query["reconstruction"]),
        "normalized_features": keras.layers.Identity(name="normalized_features")(query["normalized_features"]),
    }
    return keras.Model({"query_features": query_features, "reference_features": reference_features}, outputs,
                       name="cleannet")


def query_encoder_of(model: keras.Model) -> keras.Model:
    return model.get_layer("query_encoder")


def reference_encoder_of(model: keras.Model) -> keras.Model:
    return model.get_layer("reference_encoder")


def encode_classes(model: keras.Model, references, *, batch_size: int = 256, training: bool = False):
    """Class embeddings of every class: references (C, K, D) -> (C, E) float32 tensor."""
    encoder = reference_encoder_of(model)
    chunks = [encoder(references[start:start + batch_size], training=training)["class_embedding"]
              for start in range(0, int(references.shape[0]), batch_size)]
    return ops.concatenate(chunks, axis=0)


def score_with_class_embeddings(model: keras.Model, query_features, labels, class_embeddings, *,
                                training: bool = False):
    """Scores with a cached (C, E) table: (B, D), (B,) -> score (B,), query_embedding (B, E)."""
    query = query_encoder_of(model)(query_features, training=training)["query_embedding"]
    class_embedding = ops.take(class_embeddings, ops.cast(labels, "int32"), axis=0)
    return ops.sum(l2_normalize(query) * l2_normalize(class_embedding), axis=-1), query


def similarity_to_all_classes(query_embedding, class_embeddings):
    """Cosine of each query to every class: (B, E), (C, E) -> (B, C)."""
    return ops.matmul(l2_normalize(query_embedding), ops.transpose(l2_normalize(class_embeddings)))
