"""WORKDIR/verify/metrics.json's numbers (detection_report) and what rows each figure is measured on (METRIC_ROWS).

Detection figures on the verified_val rows (verified classes, held-out classes apart, all), the per-class noise
rates estimated from the calibrated P(label correct). pipeline/verify.py writes them.
Imports `detection`, `training`.
"""

from __future__ import annotations

import numpy as np

from cleannet_tf.detection.calibration import class_offsets, shift_probabilities
from cleannet_tf.detection.label_noise import estimate_noise_rates
from cleannet_tf.training import metrics
from cleannet_tf.training import pool as training_pool


def detection_report(scores: np.ndarray, data: training_pool.TrainingData, threshold: float | np.ndarray,
                     probabilities: np.ndarray | None = None) -> dict:
    """metrics.json's numbers: scores (P,) of the pool rows at `threshold`, one float or (P,) (each pool row's:
    its class's threshold at the calibrated operating point).

    detection_* on the verified classes' validation rows, *_heldout on held-out classes' validation rows,
    *_all on both; per class: images, estimated noise rate, the share below the threshold, and on its
    validation rows the error and the verified noise rate. The noise-rate estimates (noise_rate_estimate, per
    class and overall) are the mean of 1 - probabilities (P,) (calibrated P(label correct); in a verified class
    with its own intercept, calibration.class_offsets), each verified row counted as its label says
    (label_noise.estimate_noise_rates); without probabilities, the share below the threshold.
    """
    rows = data.validation
    labels, verification = data.labels[rows], data.verification[rows]
    heldout = data.heldout_classes[labels]
    thresholds = np.broadcast_to(np.asarray(threshold, np.float64), np.shape(scores))
    report: dict = {"threshold": float(threshold)} if np.ndim(threshold) == 0 else {}
    for suffix, mask in (("", ~heldout), ("_heldout", heldout), ("_all", np.ones_like(heldout))):
        if mask.any():
            m = metrics.detection_metrics(scores[rows][mask], verification[mask], thresholds[rows][mask])
            values = {"detection_error": m["error"], "precision": m["precision"], "recall": m["recall"],
                      "f1": m["f1"], "roc_auc": m["roc_auc"], "n_val": int(m["n"])}
        else:
            values = {"detection_error": None, "precision": None, "recall": None, "f1": None, "roc_auc": None,
                      "n_val": 0}
        report.update({name + suffix: value if name == "n_val" else _finite_or_none(value)
                       for name, value in values.items()})
    flagged = scores < thresholds
    num_classes = len(data.class_names)
    images = np.bincount(data.labels, minlength=num_classes)
    flagged_per_class = np.bincount(data.labels, weights=flagged, minlength=num_classes)
    if probabilities is None:
        estimate, overall = flagged_per_class / np.maximum(images, 1), float(flagged.mean()) if len(flagged) else None
    else:
        # Per class: the class's verified rows refit its intercept (verified classes only; held-out: 0).
        offsets = class_offsets(probabilities, data.labels, data.verification, num_classes=num_classes,
                                            classes=~data.heldout_classes)
        estimate, overall = estimate_noise_rates(
            shift_probabilities(probabilities, data.labels, offsets), data.labels,
            num_classes=num_classes, verification=data.verification)
    val_count = np.bincount(labels, minlength=num_classes)
    val_wrong = np.bincount(labels, weights=verification == 0, minlength=num_classes)
    val_error = metrics.per_class_error(scores[rows], verification, labels, thresholds[rows], num_classes)
    per_class = {}
    for c, name in enumerate(data.class_names):
        per_class[name] = {
            "images": int(images[c]), "heldout": bool(data.heldout_classes[c]),
            "noise_rate_estimate": float(estimate[c]) if images[c] else None,
            "calibration_offset": None if probabilities is None else float(offsets[c]),
            "flagged_share": float(flagged_per_class[c] / images[c]) if images[c] else None,
            "n_val": int(val_count[c]),
            "noise_rate_verified": float(val_wrong[c] / val_count[c]) if val_count[c] else None,
            "detection_error": _finite_or_none(val_error[c]),
        }
    report["noise_rate_estimate"] = overall
    report["noise_rate_estimate_from"] = ("mean of 1 - P(label correct) (calibrated; per verified class, its "
                                          "verified rows refit the intercept: per_class calibration_offset), "
                                          "verified rows as labelled"
                                          if probabilities is not None else "share below the threshold")
    report["flagged_share"] = float(flagged.mean()) if len(flagged) else None
    report["per_class"] = per_class
    return report


METRIC_ROWS = {
    "threshold": "threshold_rows (verified_train rows, never verified_val)",
    "signal_weights": "fit_rows (the same rows as the threshold)",
    "detection_error, precision, recall, f1, roc_auc": "verified_val of verified classes",
    "*_heldout": "verified_val of held-out classes", "*_all": "verified_val of every class",
    "per_class detection_error, noise_rate_verified": "verified_val of that class",
}


def _finite_or_none(value):
    return float(value) if value is not None and np.isfinite(value) else None
