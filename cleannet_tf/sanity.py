"""Sanity guards: figures that look like a failed run, as warnings for people (pure functions).

Each check returns the warnings (plain strings) that apply, an empty list when none does. The steps that make
the figures log them (`log`), store them under "warnings" in their metrics.json, and the report headline and the
run / demo summaries repeat them (pipeline.recorded_warnings):

    classifier_warnings   test accuracy near chance; epochs of too few steps (a batch size that gives enough)
    detection_warnings    a detection error not clearly below flagging nothing; too few verified rows of
                          either kind among those that chose the threshold (verified_train, fit.verified_rows)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import logging

# An epoch of fewer steps leaves BatchNorm's moving statistics unsettled (momentum 0.99: after n steps the
# initial values still weigh 0.99^n); the classifier then recomputes them after training.
MIN_STEPS_PER_EPOCH = 30
# Verified rows of each kind (label right, label wrong) choosing a threshold stable to a few percent.
MIN_VERIFIED_PER_KIND = 30
# A detection error at or above this share of "flag nothing"'s error is not clearly better than it.
MAX_ERROR_VS_NOTHING = 0.75


def chance_accuracy(labels: np.ndarray, num_classes: int) -> float:
    """Below this, an accuracy on `labels` (n,) is near chance: max(1.5 / C, majority-class share + 0.05)."""
    labels = np.asarray(labels, np.int64)
    majority = np.bincount(labels, minlength=num_classes).max() / len(labels) if len(labels) else 0.0
    return max(1.5 / max(num_classes, 1), float(majority) + 0.05)


def suggested_batch_size(num_examples: int, *, min_steps: int = MIN_STEPS_PER_EPOCH) -> int:
    """The largest power of two (at least 2) whose epochs of `num_examples` have at least `min_steps` steps."""
    batch = 2
    while num_examples // (batch * 2) >= min_steps:
        batch *= 2
    return batch


def classifier_warnings(*, test_accuracy: float | None, test_labels: np.ndarray, num_classes: int,
                        steps_per_epoch: int, epoch_size: int, batch_size: int,
                        what: str = "classifier") -> list[str]:
    """Warnings on a trained classifier: test accuracy near chance; an epoch of too few steps.

    Args:
        test_accuracy: top-1 accuracy on the test rows (None: no test split). test_labels: (n,) their labels.
        steps_per_epoch, epoch_size, batch_size: the noisy-label epochs (images per epoch, classifier.batch_size).
    """
    warnings = []
    if steps_per_epoch < MIN_STEPS_PER_EPOCH:
        warnings.append(
            f"{what}: an epoch is only {steps_per_epoch} steps ({epoch_size} images / classifier.batch_size "
            f"{batch_size}); BatchNorm statistics were recomputed after training, but "
            f"--config.classifier.batch_size={suggested_batch_size(epoch_size)} gives epochs of at least "
            f"{MIN_STEPS_PER_EPOCH} steps (and more steps in all).")
    if test_accuracy is not None and len(test_labels):
        chance = chance_accuracy(test_labels, num_classes)
        if test_accuracy < chance:
            warnings.append(
                f"{what}: test accuracy {test_accuracy:.3f} is near chance ({num_classes} classes, below "
                f"{chance:.3f}): the features it makes are unlikely to help. More epochs "
                "(classifier.epochs), a smaller classifier.batch_size on small datasets, or "
                "classifier.initial_weights=imagenet usually help.")
    return warnings


def detection_warnings(*, detection_error: float | None, verification: np.ndarray,
                       threshold_counts: tuple[int, int] | None = None,
                       threshold_rows: str = "validation labels in the verified classes",
                       what: str = "cleannet-verify") -> list[str]:
    """Warnings on the detection of wrong labels: too few verified rows choose the threshold; an error not
    clearly below flagging nothing.

    Args:
        detection_error: the share of the evaluated rows misjudged at the threshold (None: not measured).
        verification: (n,) the evaluated rows' verification labels, 1 (label right) or 0 (label wrong).
        threshold_counts: (verified-right, verified-wrong) counts of the rows that chose the threshold (default:
            those of `verification`); threshold_rows: what those rows are, for the message.
    """
    verification = np.asarray(verification)
    n_right, n_wrong = ((int(np.sum(verification == 1)), int(np.sum(verification == 0)))
                        if threshold_counts is None else (int(threshold_counts[0]), int(threshold_counts[1])))
    warnings = []
    if min(n_right, n_wrong) < MIN_VERIFIED_PER_KIND:
        more = " and ".join(f"{MIN_VERIFIED_PER_KIND - n} more verified-{kind}" for n, kind in
                            ((n_right, "right"), (n_wrong, "wrong")) if n < MIN_VERIFIED_PER_KIND)
        source = ("verified_train.tsv, or the `verified` column of a TSV's train rows" if "verified_train" in
                  threshold_rows else "verified_val.tsv, or the `verified` column of a TSV's val rows")
        warnings.append(
            f"{what}: only {n_right} verified-right and {n_wrong} verified-wrong labels ({threshold_rows}) "
            f"choose the threshold; a stable threshold needs at least {MIN_VERIFIED_PER_KIND} of each "
            f"kind: {more} ({source}).")
    n_right, n_wrong = int(np.sum(verification == 1)), int(np.sum(verification == 0))
    if detection_error is not None and n_wrong:
        nothing = n_wrong / (n_right + n_wrong)  # the error of flagging nothing
        if detection_error >= MAX_ERROR_VS_NOTHING * nothing:
            warnings.append(
                f"{what}: detection error {detection_error:.1%} is not clearly below the {nothing:.1%} of "
                "flagging nothing (the share of wrong labels among the validation rows): the scores barely "
                "separate wrong labels from right ones. Better features (a classifier well above chance, "
                "model.weights), more verified labels, or cleannet.mode=stacked usually help.")
    return warnings


def log(warnings: Sequence[str]) -> list[str]:
    """Logs each warning (absl WARNING) and returns them as a list (for metrics.json's "warnings")."""
    for warning in warnings:
        logging.warning("%s", warning)
    return list(warnings)
