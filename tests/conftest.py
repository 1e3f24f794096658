"""Test setup: two logical CPU devices before TensorFlow initialises.

MirroredStrategy tests then run on `/cpu:0` and `/cpu:1` on machines without GPUs.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture
def make_images():
    """Writes `count` random RGB images (JPEG, or PNG every third) under `directory`; returns their paths."""

    def make(directory, count, size=(30, 40), seed=0):
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        paths = []
        for i in range(count):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            path = directory / (f"img{i:04d}.png" if i % 3 == 2 else f"img{i:04d}.jpg")
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
        return np.array(paths)

    return make
