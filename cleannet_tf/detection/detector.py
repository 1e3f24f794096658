"""A high-level, cleanlab-shaped object: fit on features + noisy labels + verification labels, audit new data.

    detector = cleannet_tf.CleanNetDetector(mode="stacked", steps=3000)
    detector.fit(features, labels, verification)              # (N, D), (N,), (N,) in {-1, 0, 1}
    issues = detector.find_label_issues(new_features, new_labels, return_ranked=True)
    weights = detector.sample_weights(features, labels, mode="soft")
    suggested, suggested_score = detector.suggest_labels(new_features)
    detector.save("detector.keras"); detector = CleanNetDetector.load("detector.keras")

It runs the pipeline's own steps on arrays: reference sets (references.build_reference_sets), CleanNet training
(training/cleannet.py train_cleannet, under the current tf.distribute strategy) and the verifier with its threshold
(detection/fit.py fit_verifier). NumPy in, NumPy out.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import keras
import ml_collections
import numpy as np

from cleannet_tf import config as config_lib
from cleannet_tf.detection import calibration, label_noise, verifier
from cleannet_tf.detection import fit as verifier_fit
from cleannet_tf.features import references
from cleannet_tf.model.cleannet import MODE_SCORING
from cleannet_tf.training import cleannet as cleannet_training
from cleannet_tf.training import pool


class CleanNetDetector:
    """CleanNet label-noise detection on precomputed features.

    Args (keyword-only):
        mode: "paper", "robust" or "stacked" (cleannet.mode; see verifier.py).
        steps: CleanNet training steps. num_references: K per class.
        validation_fraction: share of the verified rows (drawn per seed) kept to choose the threshold (and fit
            the stacked score) when `fit` gets no `validation` mask.
        signals: the stacked score's signals, a tuple (or comma string) of SIGNAL_NAMES (default: the config's
            verify.signals, all four); "class_mean_margin" transferred best to unverified classes on the demo.
        config: optional full config (config.default_config() schema) for every other setting, used as
            given except for the fields of the arguments above. Default: `detector_config(mode, steps)`.
        seed: int.
    """

    def __init__(self, *, mode: str = "stacked", steps: int = 3000, num_references: int = 8,
                 validation_fraction: float = 0.3, signals: str | tuple[str, ...] | None = None,
                 config: ml_collections.ConfigDict | None = None, seed: int = 0):
        config = detector_config(mode, steps) if config is None else ml_collections.ConfigDict(config.to_dict())
        config.cleannet.mode = mode
        config.train.steps = steps
        config.refs.num_references = num_references
        if signals is not None:
            config.verify.signals = tuple(name.strip() for name in signals.split(",") if name.strip()) \
                if isinstance(signals, str) else tuple(signals)
        config.seed = seed
        self.config = config_lib.validate(config, needs_data=False)  # data.* is not read: the data come as arrays
        if not 0.0 < validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in (0, 1). Received {validation_fraction}")
        self.validation_fraction = validation_fraction
        self.verifier_: keras.Model | None = None
        self.threshold_: float | None = None
        self.info_: dict = {}

    # ------------------------------------------------------------------ fitting

    def fit(self, features, labels, verification, *, validation=None, num_classes: int | None = None,
            class_names=None, workdir: str | None = None) -> CleanNetDetector:
        """Trains CleanNet and chooses the threshold.

        Args:
            features: (N, D) float, e.g. pool5 features of every image (noisy pool; no test images).
            labels: (N,) int noisy labels in [0, C).
            verification: (N,) int: 1 label verified correct, 0 verified wrong, -1 not verified. Classes with
                no verified row are scored by transfer.
            validation: optional (N,) bool: verified rows that choose the threshold (never trained on);
                default a seeded `validation_fraction` of the verified rows.
            num_classes: C (default max label + 1). class_names: optional C names.
            workdir: where CleanNet checkpoints go (default a temporary folder, removed after fitting).
        Returns:
            self.
        """
        features = np.ascontiguousarray(features, dtype=np.float32)
        labels = np.asarray(labels)
        verification = np.asarray(verification)
        n = len(features)
        if features.ndim != 2 or labels.shape != (n,) or verification.shape != (n,):
            raise ValueError(f"Need features (N, D), labels (N,), verification (N,). Received {features.shape}, "
                             f"{labels.shape}, {verification.shape}")
        if not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
            raise ValueError("labels must be non-negative integers.")
        if not np.isin(verification, (-1, 0, 1)).all():
            raise ValueError("verification must hold -1 (not verified), 0 (wrong) or 1 (correct).")
        num_classes = int(num_classes or labels.max() + 1)
        class_names = tuple(class_names) if class_names is not None else tuple(f"class_{c}" for c in range(
            num_classes))
        if len(class_names) != num_classes or labels.max() >= num_classes:
            raise ValueError(f"labels must be in [0, {num_classes}) with {num_classes} class names.")
        verified = verification >= 0
        if validation is None:
            rng = np.random.default_rng([self.config.seed, 7])
            validation = verified & (rng.random(n) < self.validation_fraction)
        validation = np.asarray(validation, bool)
        if validation.shape != (n,) or (validation & ~verified).any():
            raise ValueError("validation must be an (N,) bool mask of verified rows.")
        if not (verified & ~validation).any() or not validation.any():
            raise ValueError("Need verified rows both for training and for validation.")

        present = np.bincount(labels, minlength=num_classes) > 0
        heldout = ~np.isin(np.arange(num_classes), labels[verified & ~validation]) & present
        data = pool.TrainingData(
            features=features, labels=labels.astype(np.int32), verification=verification.astype(np.int8),
            table_rows=np.arange(n, dtype=np.int64), verified_train=np.nonzero(verified & ~validation)[0],
            validation=np.nonzero(validation)[0], heldout_classes=heldout, class_names=class_names)
        pool.check_features(features, np.array([f"row {i}" for i in range(n)]))
        refs = self.config.refs
        reference_sets = references.build_reference_sets(
            lambda rows: features[rows], labels, np.ones(n, bool), class_names, num_references=refs.num_references,
            n_init=refs.n_init, max_iter=refs.max_iter, tol=refs.tol, max_samples_per_class=refs.max_samples_per_class,
            seed=self.config.seed, core_fraction=refs.core_fraction, progress=False)
        if (reference_sets.counts == 0).any():
            missing = class_names[int(np.argmin(reference_sets.counts))]
            raise ValueError(f"Class {missing!r} has no rows: every class in [0, C) needs images.")

        calibration = np.zeros(num_classes, bool)
        if self.config.cleannet.mode == "stacked":
            calibration = cleannet_training.pick_calibration_classes(
                data.labels[data.verified_train], num_classes, self.config.cleannet.calibration_fraction,
                self.config.seed)
        training = dataclasses.replace(
            data, verified_train=data.verified_train[~calibration[data.labels[data.verified_train]]],
            heldout_classes=heldout | calibration)
        with tempfile.TemporaryDirectory(prefix="cleannet-detector-") as scratch:
            output_dir = workdir or scratch
            cleannet_training.train_cleannet(training, reference_sets, self.config, output_dir, progress=False)
            cleannet = keras.saving.load_model(os.path.join(output_dir, "model.keras"))
        signals = tuple(self.config.verify.signals)
        self.verifier_, self.info_ = verifier_fit.fit_verifier(
            cleannet, data, reference_sets, mode=self.config.cleannet.mode,
            class_mean_keep=self.config.verify.class_mean_keep, calibration_classes=calibration, signals=signals,
            classifier_rounds=self.config.verify.classifier_rounds,
            operating_point=self.config.verify.operating_point, seed=self.config.seed)
        self.threshold_ = float(self.info_["threshold"])
        return self

    # ------------------------------------------------------------------ scoring

    def _check_fitted(self) -> keras.Model:
        if self.verifier_ is None:
            raise ValueError("CleanNetDetector is not fitted: call fit() or CleanNetDetector.load() first.")
        return self.verifier_

    def score(self, features, labels, *, batch_size: int = 4096) -> np.ndarray:
        """(N, D), (N,) -> (N,) float32 scores in [-1, 1]; low = label likely wrong."""
        model = self._check_fitted()
        labels = np.asarray(labels, np.int64)
        scores = [np.asarray(model({"features": np.asarray(features[s:s + batch_size], np.float32),
                                    "label": labels[s:s + batch_size]})["score"])
                  for s in range(0, len(labels), batch_size)]
        return np.concatenate(scores) if scores else np.zeros(0, np.float32)

    def find_label_issues(self, features, labels, *, return_ranked: bool = False) -> np.ndarray:
        """(N,) bool mask of likely wrong labels, or their indices most suspicious first (return_ranked), at the
        verifier's operating point (each class's threshold: verify.operating_point)."""
        return label_noise.find_label_issues(self.score(features, labels), threshold=self.pair_thresholds(labels),
                                             return_ranked=return_ranked)

    def pair_thresholds(self, labels) -> np.ndarray:
        """(N,) float64 threshold of each label (N,): its class's at the verifier's operating point."""
        return verifier.verification_head_of(self._check_fitted()).pair_thresholds(labels)

    def sample_weights(self, features, labels, *, mode: str = "soft", verification=None) -> np.ndarray:
        """(N,) float32 training weights: "soft" the verifier's weight_soft (its calibrated P(label correct);
        paper mode max(0, s)), "hard" 1[s >= the label's threshold] (find_label_issues' complement); verification
        wins."""
        scores = self.score(features, labels)
        head = verifier.verification_head_of(self._check_fitted())
        probabilities = calibration.correct_probabilities(scores, scoring=head.scoring, calibration=head.calibration)
        if self.config.cleannet.mode == "paper":
            probabilities = None  # the paper's max(0, cos), like the verifier's weight_soft
        return label_noise.sample_weights(scores, mode=mode, threshold=self.pair_thresholds(labels),
                                          verification=verification,
                                          probabilities=probabilities)

    def suggest_labels(self, features, *, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(N, D) -> the best-scoring class (N,) int64 and its score (N,) float32."""
        scores = verifier.class_scores(self._check_fitted(), np.asarray(features, np.float32), batch_size=batch_size)
        return scores.argmax(axis=1).astype(np.int64), scores.max(axis=1)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str) -> None:
        """Writes the verifier model (threshold and class embeddings inside) to `path` (.keras), atomically."""
        from cleannet_tf.training.checkpointing import save_model

        save_model(self._check_fitted(), path)

    @classmethod
    def load(cls, path: str) -> CleanNetDetector:
        """A fitted detector from a `save`d .keras file or WORKDIR/verify/verifier.keras.

        Its mode is the verifier's; its other settings (used by a new `fit`) are the defaults of that mode.
        """
        model = keras.saving.load_model(path)
        head = verifier.verification_head_of(model)
        mode = {scoring: mode for mode, scoring in MODE_SCORING.items()}[head.scoring]
        detector = cls(mode=mode)
        detector.verifier_, detector.threshold_ = model, head.threshold
        return detector


def detector_config(mode: str = "stacked", steps: int = 3000) -> ml_collections.ConfigDict:
    """The default config with the detector's settings for `mode` and `steps` (data given as arrays).

    lr decay at steps / 2; evaluation at least 4 times; modes robust and stacked build reference sets on each
    class's core (refs.core_fraction 0.7); stacked holds out 30% of the verified classes to calibrate on.
    """
    config = config_lib.default_config()
    config.cleannet.mode = mode
    config.train.steps = steps
    config.train.lr_decay_steps = max(1, steps // 2)
    config.train.eval_every = max(1, min(config.train.eval_every, steps // 4 or 1))
    config.train.checkpoint_every = max(1, min(config.train.checkpoint_every, steps))
    if mode != "paper":
        config.refs.core_fraction = min(config.refs.core_fraction, 0.7)
    if mode == "stacked" and not config.cleannet.calibration_fraction:
        config.cleannet.calibration_fraction = 0.3
    return config
