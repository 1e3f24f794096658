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


def write_feature_dataset(directory, *, num_classes=6, per_class=150, feature_dim=24, noise_rate=0.2,
                          verified_fraction=0.4, val_fraction=0.2, heldout=(), spread=0.8, seed=0):
    """A TSV dataset with precomputed features (.npz) of planted clusters and known label noise.

    Returns (config overrides dict, true labels (N,), noisy labels (N,)). No images
    are written: `data.check_images` is off and `data.features` replaces extraction.
    """
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    true = np.repeat(np.arange(num_classes), per_class)
    noisy = true.copy()
    flipped = rng.permutation(n)[: int(round(noise_rate * n))]
    noisy[flipped] = (true[flipped] + rng.integers(1, num_classes, len(flipped))) % num_classes
    centres = rng.gamma(1.0, 1.0, (num_classes, feature_dim)) * 3
    features = np.maximum(centres[true] + rng.normal(0, spread, (n, feature_dim)), 0).astype(np.float32)
    role = rng.random(n)
    lines = ["path\tlabel\tverified\tsplit"]
    keys = []
    for i in range(n):
        key = f"img{i:05d}.jpg"
        keys.append(key)
        verified, split = "", "train"
        if role[i] < val_fraction:
            verified, split = str(int(noisy[i] == true[i])), "val"
        elif role[i] < val_fraction + verified_fraction and noisy[i] not in heldout:
            verified = str(int(noisy[i] == true[i]))
        lines.append(f"{key}\tclass{noisy[i]}\t{verified}\t{split}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "labels.tsv").write_text("\n".join(lines) + "\n")
    np.savez(directory / "features.npz", keys=np.array(keys), features=features)
    overrides = {"data.format": "tsv", "data.root": str(directory / "labels.tsv"),
                 "data.features": str(directory / "features.npz"), "data.check_images": False}
    if heldout:
        names = "\n".join(f"class{c}\t{0 if c in heldout else 1}" for c in range(num_classes))
        (directory / "heldout.txt").write_text("class\tkeep\n" + names + "\n")
        overrides["data.heldout_list"] = str(directory / "heldout.txt")
    return overrides, true, noisy


def kill_at_marker(command, marker, what: str, *, timeout: float = 240) -> int:
    """Runs `command` (a process that touches `marker` and then waits), SIGKILLs it once `marker` exists.

    Returns the process id (its temporary files carry it). Fails, naming `what`, if the marker never appears.
    """
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"the process did not reach {what} (exit code {process.poll()})"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return process.pid


def small_train_config(overrides, **extra):
    """A validated config for fast CleanNet training on a feature dataset."""
    from cleannet_tf import config as config_lib

    config = config_lib.default_config()
    # k-means gives each far-off cluster of noisy images its own centre: K must
    # leave most centres to the true cluster for the paper's model to learn fast.
    settings = {"refs.num_references": 16, "refs.n_init": 1, "cleannet.query_hidden_dim": 32,
                "cleannet.reference_hidden_dim": 32, "cleannet.attention_dim": 16, "cleannet.embed_dim": 16,
                "train.steps": 400, "train.batch_size": 16, "train.learning_rate": 0.05,
                "train.lr_decay_steps": 1000, "train.eval_every": 100, "train.log_every": 50,
                "train.checkpoint_every": 100, **overrides, **extra}
    for field, value in settings.items():
        section, name = field.split(".")
        config[section][name] = value
    return config_lib.validate(config)
