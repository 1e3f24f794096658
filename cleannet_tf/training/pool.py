"""CleanNet training data: which rows train and validate, and the batches of each step.

Each step mixes a verified half (sequential passes over the shuffled verified
training rows, reshuffled every pass) and an unverified half (a class drawn
uniformly, then one of its images uniformly, with replacement), as the paper
does. The rows of step s are a pure function of (seed, s), so a run resumed at
step s sees exactly the data an uninterrupted run would.

Notation: N table rows, P pool rows (train + val images with readable features),
C classes, D feature dim, K references.

Imports `data`, `features.store`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from cleannet_tf.data import table as data_table
from cleannet_tf.features.store import FeatureSource


@dataclasses.dataclass
class TrainingData:
    """Features and labels CleanNet trains and validates on.

    Attributes:
        features: (P, D) float32 raw features of the pool rows.
        labels: (P,) int32 noisy labels.
        verification: (P,) int8 verification labels (-1 unknown).
        table_rows: (P,) int64 row of each pool entry in the table.
        verified_train: (Vt,) int64 pool indices with training verification labels.
        validation: (Vv,) int64 pool indices with validation verification labels.
        heldout_classes: (C,) bool.
        class_names: C str.
    """

    features: np.ndarray
    labels: np.ndarray
    verification: np.ndarray
    table_rows: np.ndarray
    verified_train: np.ndarray
    validation: np.ndarray
    heldout_classes: np.ndarray
    class_names: tuple[str, ...]

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


def check_features(features: np.ndarray, keys: np.ndarray, *, what: str = "features") -> None:
    """Raises ValueError naming the first row with NaN or Inf."""
    for start in range(0, len(features), 65536):
        finite = np.isfinite(features[start:start + 65536]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(f"{what} of {keys[row]!r} (row {row}) contain NaN or Inf; "
                             f"{int((~finite).sum())} such rows in [{start}, {start + len(finite)}).")


def prepare_training_data(table: data_table.LabelTable, features: FeatureSource, reference_class_names,
                          reference_dim: int, reference_counts: np.ndarray) -> TrainingData:
    """Selects and checks the rows CleanNet uses; every problem is reported before training.

    Raises:
        ValueError: NaN/Inf features, a feature dimension that differs from the
            references', classes without a reference set, no verified training rows.
    """
    if tuple(reference_class_names) != tuple(table.class_names):
        raise ValueError(f"references.npz was built for other classes ({len(reference_class_names)} classes, "
                         f"the table has {table.num_classes}): rerun cleannet-refs.")
    if features.feature_dim != reference_dim:
        raise ValueError(f"Features have dimension {features.feature_dim} but the reference sets {reference_dim}: "
                         "rerun cleannet-refs on these features.")
    missing = np.nonzero(np.asarray(reference_counts) == 0)[0]
    if len(missing):
        raise ValueError(f"{len(missing)} classes have no reference set, e.g. {table.class_names[missing[0]]!r}.")
    pool = np.nonzero(features.valid() & (table.split != data_table.SPLIT_TEST))[0]
    pool_features = features.gather(pool)
    check_features(pool_features, table.keys[pool])
    verification = table.verification[pool]
    split = table.split[pool]
    verified_train = np.nonzero((verification >= 0) & (split == data_table.SPLIT_TRAIN))[0]
    validation = np.nonzero((verification >= 0) & (split == data_table.SPLIT_VAL))[0]
    if not len(verified_train):
        raise ValueError("No verified training rows: CleanNet needs verification labels (verified_train.tsv, the "
                         "`verified` column, or clean labels) for at least some classes. Held-out classes: "
                         f"{int(table.heldout_classes.sum())} of {table.num_classes}.")
    return TrainingData(features=pool_features, labels=table.labels[pool].astype(np.int32),
                        verification=verification, table_rows=pool.astype(np.int64),
                        verified_train=verified_train.astype(np.int64), validation=validation.astype(np.int64),
                        heldout_classes=table.heldout_classes.copy(), class_names=tuple(table.class_names))


class StepSampler:
    """Pool indices of each step's verified and unverified halves, from (seed, step) alone."""

    def __init__(self, data: TrainingData, *, verified_per_step: int, unverified_per_step: int, seed: int):
        self.verified_rows = data.verified_train
        self.verified_per_step = verified_per_step
        self.unverified_per_step = unverified_per_step
        self.seed = seed
        self.num_classes = len(data.class_names)
        order = np.argsort(data.labels, kind="stable")
        classes, starts, counts = np.unique(data.labels[order], return_index=True, return_counts=True)
        self.rows_by_class = order
        self.class_starts, self.class_counts = starts, counts
        self._permutations: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 4:
                self._permutations.pop(min(self._permutations))
            rng = np.random.default_rng([self.seed, 0, epoch])
            self._permutations[epoch] = self.verified_rows[rng.permutation(len(self.verified_rows))]
        return self._permutations[epoch]

    def verified(self, step: int) -> np.ndarray:
        n = len(self.verified_rows)
        positions = step * self.verified_per_step + np.arange(self.verified_per_step)
        epochs, within = positions // n, positions % n
        return np.array([self._permutation(int(e))[i] for e, i in zip(epochs, within, strict=True)], np.int64)

    def unverified(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, step])
        classes = rng.integers(len(self.class_counts), size=self.unverified_per_step)
        within = (rng.random(self.unverified_per_step) * self.class_counts[classes]).astype(np.int64)
        return self.rows_by_class[self.class_starts[classes] + within]


    def negative_labels(self, step: int, labels: np.ndarray) -> np.ndarray:
        """A class other than each label, uniformly (loss.other_class_weight): (n,) -> (n,) int32."""
        rng = np.random.default_rng([self.seed, 2, step])
        offset = rng.integers(1, max(self.num_classes, 2), size=len(labels))
        return ((labels + offset) % self.num_classes).astype(np.int32)


def make_train_dataset(data: TrainingData, sampler: StepSampler, *, start_step: int, num_steps: int,
                       num_replicas: int, replica_ids) -> tf.data.Dataset:
    """Per-replica batches of steps [start_step, num_steps) for the replicas `replica_ids`.

    Each global step is split evenly: replica r gets its share of the verified
    and of the unverified half. Elements come replica after replica, step after
    step: {"query_features" (b, D), "label" (b,), "verification_label" (b,),
    "is_verified" (b,), "negative_label" (b,) a random other class} with b = global batch / num_replicas.
    """
    verified_share = sampler.verified_per_step // num_replicas
    unverified_share = sampler.unverified_per_step // num_replicas
    replica_ids = list(replica_ids)

    def batches_of_step(step):
        step = int(step)
        verified, unverified = sampler.verified(step), sampler.unverified(step)
        all_rows = np.concatenate([verified, unverified])
        negatives = dict(zip(("verified", "unverified"), np.split(
            sampler.negative_labels(step, data.labels[all_rows]), [len(verified)]), strict=True))
        out = []
        for r in replica_ids:
            rows = np.concatenate([verified[r * verified_share:(r + 1) * verified_share],
                                   unverified[r * unverified_share:(r + 1) * unverified_share]])
            is_verified = np.concatenate([np.ones(verified_share, np.float32), np.zeros(unverified_share, np.float32)])
            label = np.maximum(data.verification[rows], 0).astype(np.float32) * is_verified
            negative = np.concatenate([negatives["verified"][r * verified_share:(r + 1) * verified_share],
                                       negatives["unverified"][r * unverified_share:(r + 1) * unverified_share]])
            out.append((data.features[rows], data.labels[rows], label, is_verified, negative))
        return [np.stack(column) for column in zip(*out, strict=True)]

    feature_dim = data.feature_dim
    per_replica = verified_share + unverified_share

    def load(step):
        features, labels, verification, is_verified, negative = tf.numpy_function(
            batches_of_step, [step], [tf.float32, tf.int32, tf.float32, tf.float32, tf.int32], stateful=False)
        n = len(replica_ids)
        return tf.data.Dataset.from_tensor_slices({
            "query_features": tf.ensure_shape(features, (n, per_replica, feature_dim)),
            "label": tf.ensure_shape(labels, (n, per_replica)),
            "verification_label": tf.ensure_shape(verification, (n, per_replica)),
            "is_verified": tf.ensure_shape(is_verified, (n, per_replica)),
            "negative_label": tf.ensure_shape(negative, (n, per_replica)),
        })

    dataset = tf.data.Dataset.range(start_step, num_steps).flat_map(load)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
