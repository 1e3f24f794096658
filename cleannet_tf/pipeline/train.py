"""cleannet-train: CleanNet on WORKDIR/features and WORKDIR/references.npz -> WORKDIR/cleannet/.

Imports `data`, `training`, `pipeline.artifacts`.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline.artifacts import load_training_inputs
from cleannet_tf.pipeline.workdir import cleannet_dir
from cleannet_tf.training.cleannet import train_cleannet


def run_train(config: ml_collections.ConfigDict, workdir: str, *, strategy: tf.distribute.Strategy | None = None,
              table: data_table.LabelTable | None = None, progress: bool = True) -> dict:
    """cleannet-train: trains CleanNet on WORKDIR's features and reference sets -> WORKDIR/cleannet/."""
    data, reference_sets = load_training_inputs(config, workdir, table, for_training=True)
    _, payload = train_cleannet(data, reference_sets, config, cleannet_dir(workdir), strategy=strategy,
                                encoding=config.cleannet.encoding, progress=progress)
    return payload
