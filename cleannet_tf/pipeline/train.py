"""cleannet-train: CleanNet on WORKDIR/features and WORKDIR/references.npz -> WORKDIR/cleannet/.

Imports `config`, `data`, `features`, `training`.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf

from cleannet_tf.data import table as data_table
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.pipeline.extract import open_features
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import cleannet_dir, references_path
from cleannet_tf.training import pool
from cleannet_tf.training.cleannet import calibration_classes, log_calibration_classes, train_cleannet


def load_training_inputs(config: ml_collections.ConfigDict, workdir: str,
                         table: data_table.LabelTable | None = None, *,
                         for_training: bool = False) -> tuple[pool.TrainingData, ReferenceSets]:
    """The table, features and reference sets the earlier steps wrote, checked.

    for_training: the calibration classes (cleannet.calibration_fraction) lose their verified train rows and
    count as held out, as CleanNet must not see them.
    """
    table = table if table is not None else load_table(config, workdir)
    if for_training and config.cleannet.calibration_fraction > 0:
        calibration = calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
        log_calibration_classes(table.class_names, calibration, config.cleannet.calibration_fraction)
        table = data_table.apply_heldout(table, calibration, reason=data_table.CALIBRATION_SKIP_REASON)
    features = open_features(config, workdir, table)
    reference_sets = ReferenceSets.load(references_path(workdir))
    data = pool.prepare_training_data(table, features, reference_sets.class_names,
                                            reference_sets.references.shape[2], reference_sets.counts)
    return data, reference_sets


def run_train(config: ml_collections.ConfigDict, workdir: str, *, strategy: tf.distribute.Strategy | None = None,
              table: data_table.LabelTable | None = None, progress: bool = True) -> dict:
    """cleannet-train: trains CleanNet on WORKDIR's features and reference sets -> WORKDIR/cleannet/."""
    data, reference_sets = load_training_inputs(config, workdir, table, for_training=True)
    _, payload = train_cleannet(data, reference_sets, config, cleannet_dir(workdir), strategy=strategy,
                                encoding=config.cleannet.encoding, progress=progress)
    return payload
