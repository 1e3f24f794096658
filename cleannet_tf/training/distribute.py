"""tf.distribute strategies from `config.runtime`.

`auto` mirrors over every local GPU when there is one and otherwise uses the
default strategy; `mirrored` mirrors over every local device of the preferred
kind (GPUs, else the logical CPU devices); `multi_worker` reads TF_CONFIG.

Imports nothing of the package.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging

STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")  # build_strategy names


def configure_logical_cpus(count: int) -> None:
    """Splits the host CPU into `count` logical devices (before TF initialises)."""
    if count <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as error:  # already initialised: keep what is there
        logging.warning("runtime.logical_cpu_devices=%d not applied: %s", count, error)


def _mirrored_devices() -> list[str]:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return [d.name for d in gpus]
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def build_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the strategy called `name` (see module docstring)."""
    if name == "auto":
        name = "mirrored" if tf.config.list_logical_devices("GPU") else "default"
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "one_device":
        strategy = tf.distribute.OneDeviceStrategy(_mirrored_devices()[0])
    elif name == "mirrored":
        strategy = tf.distribute.MirroredStrategy(_mirrored_devices())
    elif name == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        raise ValueError(f"Unknown strategy {name!r}; expected auto, default, one_device, mirrored or multi_worker.")
    logging.info("Strategy %s with %d replica(s).", type(strategy).__name__, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes outputs (always true off multi-worker)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0
