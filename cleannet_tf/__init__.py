"""cleannet_tf: CleanNet label-noise detection for TensorFlow 2 / Keras 3.

Reference: K.-H. Lee, X. He, L. Zhang, L. Yang. "CleanNet: Transfer Learning for
Scalable Image Classifier Training with Label Noise", CVPR 2018.

Notation used throughout: N images, C classes, D feature dimension, K references
per class, E embedding dimension.

The public API below loads on first use, so `import cleannet_tf.ops` or `cleannet_tf.config` does not import
TensorFlow. Importing the package still registers CleanNet's Keras layers for `keras.saving.load_model(
"WORKDIR/cleannet/model.keras")`: at once if Keras is already imported, otherwise as soon as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_PUBLIC = {
    "CleanNetDetector": "cleannet_tf.detection.detector",
    "build_cleannet": "cleannet_tf.model.cleannet",
    "find_label_issues": "cleannet_tf.detection.label_noise",
    "sample_weights": "cleannet_tf.detection.label_noise",
}
__all__ = [*_PUBLIC, "__version__"]

# Every module that registers a Keras class (@keras.saving.register_keras_serializable): what a saved model needs.
KERAS_CLASS_MODULES = (
    "cleannet_tf.model.layers",
    "cleannet_tf.features.backbones",
    "cleannet_tf.features.efficientnet_lite",
    "cleannet_tf.features.block_cache",
    "cleannet_tf.detection.verifier",
)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cleannet_tf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])


def register_keras_classes() -> None:
    """Imports KERAS_CLASS_MODULES (and so Keras and TensorFlow)."""
    for module in KERAS_CLASS_MODULES:
        importlib.import_module(module)


class _RegisterAfterKeras(importlib.abc.MetaPathFinder):
    """Finds `keras` with the other finders and runs register_keras_classes once its import has finished."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_keras = spec.loader.exec_module

        def exec_module(module):
            exec_keras(module)
            register_keras_classes()

        spec.loader.exec_module = exec_module
        return spec


if "keras" in sys.modules:
    register_keras_classes()
elif not any(isinstance(finder, _RegisterAfterKeras) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKeras())
