"""cleannet-refs: per-class reference sets of WORKDIR/features -> WORKDIR/references.npz.

Imports `data`, `features`, `pipeline.artifacts`.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from absl import logging

from cleannet_tf.data import table as data_table
from cleannet_tf.features import references
from cleannet_tf.pipeline.artifacts import open_features
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import (
    references_path,
)


def reference_rows(table: data_table.LabelTable, valid_features: np.ndarray) -> np.ndarray:
    """(N,) bool: rows that build reference sets: the noisy pool (train and val), readable images.

    As in the paper, every image labelled c counts, noisy labels and verified
    validation images included; test images never do.
    """
    return valid_features & (table.split != data_table.SPLIT_TEST)


def run_refs(config: ml_collections.ConfigDict, workdir: str, *, table: data_table.LabelTable | None = None,
             progress: bool = True) -> references.ReferenceSets:
    """cleannet-refs: k-means++ reference sets of every class -> WORKDIR/references.npz."""
    table = table if table is not None else load_table(config, workdir)
    features = open_features(config, workdir, table)
    reference_sets = references.build_reference_sets(
        features.gather, table.labels, reference_rows(table, features.valid()), table.class_names,
        num_references=config.refs.num_references, n_init=config.refs.n_init, max_iter=config.refs.max_iter,
        tol=config.refs.tol, max_samples_per_class=config.refs.max_samples_per_class, seed=config.seed,
        core_fraction=config.refs.core_fraction,
        progress=progress)
    reference_sets.save(references_path(workdir))
    logging.info("Wrote %s: %d classes x %d references x %d dims.", references_path(workdir),
                 *reference_sets.references.shape)
    return reference_sets
