"""A tiny SavedModel for the serving tests that need any model, not CleanNet's: y = scale * x."""

from __future__ import annotations

import os

import tensorflow as tf


def write_scaler(base_path, scale: float = 2.0, version: int = 1) -> str:
    """Writes base_path/<version>/ with one signature, serving_default: {"x": (None,) float32} -> {"y": scale x}."""

    class Scaler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": x * scale}

    module = Scaler()
    path = os.path.join(str(base_path), str(version))
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path
