"""What the training loops share: where a worker writes, resuming, and files written atomically.

Under MultiWorkerMirroredStrategy every worker saves checkpoints (saving is a
collective step), but only the chief writes to the real output folder; the
others write to a private temporary folder.

Imports `atomic_io`.
"""

from __future__ import annotations

import os
import tempfile

import keras
import tensorflow as tf
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.training import distribute


def worker_output_dir(strategy: tf.distribute.Strategy, output_dir: str) -> str:
    """output_dir on the chief, a private temporary folder on the other workers."""
    directory = output_dir if distribute.is_chief(strategy) else tempfile.mkdtemp(prefix="cleannet-worker-")
    os.makedirs(directory, exist_ok=True)
    return directory


def restore_latest(checkpoint: tf.train.Checkpoint, directory: str, *,
                   max_to_keep: int = 3) -> tf.train.CheckpointManager:
    """A CheckpointManager on `directory`, with its latest checkpoint (if any) restored into `checkpoint`."""
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s", manager.latest_checkpoint)
    return manager


def save_checkpoint(manager: tf.train.CheckpointManager, step: int) -> None:
    """manager.save(checkpoint_number=step); a full disk is DiskFullError naming the checkpoint folder (TensorFlow
    raises ResourceExhaustedError naming only a temporary file)."""
    with atomic_io.naming_path(manager.directory):
        manager.save(checkpoint_number=step)


def save_model(model: keras.Model, path: str) -> None:
    """model.save(path) through a temporary name, so readers never see half a file."""
    with atomic_io.atomic_path(path) as tmp:
        model.save(tmp)


def write_json(path: str, payload: dict) -> None:
    """JSON written through a temporary name."""
    atomic_io.write_json(path, payload)
