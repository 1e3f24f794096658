"""CleanNet's custom layers, registered so `keras.saving.load_model` restores them.

Import `cleannet_tf` (or this module) before loading a `.keras` file that has them.

Imports nothing of the package.
"""

from __future__ import annotations

import keras
from keras import ops

FEATURE_NORMS = ("log", "l2", "none")  # FeatureNormalization modes


@keras.saving.register_keras_serializable(package="cleannet_tf")
class FeatureNormalization(keras.layers.Layer):
    """Normalises raw features before CleanNet sees them.

    Modes: "log" (the paper's ln(1 + x); for negative inputs, -ln(1 - x), so any
    backbone's features stay finite), "l2" (unit L2 norm on the last axis),
    "none". Shape: (..., D) -> (..., D).

    Example:
        >>> FeatureNormalization("log")(np.array([[0.0, np.e - 1]]))  # [[0., 1.]]
    """

    def __init__(self, mode: str = "log", **kwargs):
        super().__init__(**kwargs)
        if mode not in FEATURE_NORMS:
            raise ValueError(f"FeatureNormalization mode must be log, l2 or none. Received: mode={mode!r}")
        self.mode = mode

    def call(self, features):
        features = ops.cast(features, self.compute_dtype)
        if self.mode == "log":
            return signed_log1p(features)
        if self.mode == "l2":
            return l2_normalize(features)
        return features

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def signed_log1p(x):
    """CleanNet's ln(1 + x), sign-symmetric: sign(x) ln(1 + |x|) in Keras ops (cleannet_tf.ops has the NumPy one)."""
    return ops.sign(x) * ops.log1p(ops.abs(x))


def l2_normalize(x, axis: int = -1):
    """x / sqrt(max(sum(x^2), 1e-12)), as tf.nn.l2_normalize."""
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="cleannet_tf")
class ContextAttentionPooling(keras.layers.Layer):
    """Attention over a set with a learned context vector (hierarchical attention networks).

    With per-element keys u_i (B, K, A) and values h_i (B, K, H):
    e_i = u_i . c, alpha = softmax_i(e), output z = sum_i alpha_i h_i (B, H).
    The context vector c (A,) is Glorot-uniform initialised and has no bias.
    Also returns alpha (B, K) when `return_attention=True`.
    """

    def __init__(self, return_attention: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.return_attention = return_attention

    def build(self, keys_shape, values_shape=None):
        self.context = self.add_weight(name="context", shape=(keys_shape[-1],), initializer="glorot_uniform")

    def call(self, keys, values):
        logits = ops.einsum("bka,a->bk", keys, self.context)
        attention = ops.softmax(logits, axis=-1)
        pooled = ops.einsum("bk,bkh->bh", attention, values)
        return (pooled, attention) if self.return_attention else pooled

    def compute_output_shape(self, keys_shape, values_shape):
        pooled = (keys_shape[0], values_shape[-1])
        return (pooled, keys_shape[:2]) if self.return_attention else pooled

    def get_config(self):
        return {**super().get_config(), "return_attention": self.return_attention}


@keras.saving.register_keras_serializable(package="cleannet_tf")
class CosineSimilarity(keras.layers.Layer):
    """Cosine of two embeddings along the last axis: (B, E), (B, E) -> (B,)."""

    def call(self, a, b):
        return ops.sum(l2_normalize(a) * l2_normalize(b), axis=-1)

    def compute_output_shape(self, a_shape, b_shape):
        return a_shape[:-1]
