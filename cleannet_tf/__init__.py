"""cleannet_tf: CleanNet label-noise detection for TensorFlow 2 / Keras 3.

Reference: K.-H. Lee, X. He, L. Zhang, L. Yang. "CleanNet: Transfer Learning for
Scalable Image Classifier Training with Label Noise", CVPR 2018.

Notation used throughout: N images, C classes, D feature dimension, K references
per class.
"""

__version__ = "0.1.0"
