"""cleannet_tf: CleanNet label-noise detection for TensorFlow 2 / Keras 3.

Reference: K.-H. Lee, X. He, L. Zhang, L. Yang. "CleanNet: Transfer Learning for
Scalable Image Classifier Training with Label Noise", CVPR 2018.

Notation used throughout: N images, C classes, D feature dimension, K references
per class, E embedding dimension.

Importing the package registers CleanNet's Keras layers, so
`keras.saving.load_model("WORKDIR/cleannet/model.keras")` works afterwards.
"""

__version__ = "0.1.0"

from cleannet_tf import _startup  # noqa: E402  (before TensorFlow: the commands' quiet start-up)

_startup.quiet_tensorflow_startup()
try:
    import tensorflow  # noqa: E402, F401
except BaseException:
    _startup.finish_import(failed=True)
    raise
_startup.finish_import(failed=False)

from cleannet_tf.detection.label_noise import find_label_issues, sample_weights  # noqa: E402
from cleannet_tf.detector import CleanNetDetector  # noqa: E402
from cleannet_tf.model.cleannet import build_cleannet  # noqa: E402  (also registers the layers)

__all__ = ["CleanNetDetector", "build_cleannet", "find_label_issues", "sample_weights", "__version__"]
