"""The operating point: which pairs are flagged. "threshold": score < the threshold with the lowest error on the
verified rows the score was fitted on (fit.py). "calibrated": P(label wrong) > 1/2, the lower expected error
for equal costs, with P(label correct) re-based on each class's own noise rate.

A posterior calibrated on rows with noise rate pi_0 assumes that prior; a class with noise rate pi_c gets
logit P_c(correct | x) = logit P(correct | x) + d_c, d_c = logit(1 - pi_c) - logit(1 - pi_0) (the class offsets
of calibration.shift_probabilities). pi_c is unknown in unverified classes: `prior_offsets` estimates it from
the class's unverified scores with the EM prior re-estimation of Saerens, Latinne & Decaestecker (Neural
Computation 14, 2002): pi_c <- the mean of 1 - P_c(correct | x) over the class's rows (estimate_noise_rates),
until it stops moving. Flagging at P_c(correct) < 1/2 is, within a class, a score threshold (class_thresholds),
so find_label_issues and sample_weights(mode="hard") take the per-pair thresholds `thresholds[labels]`.

Notation as label_noise.py. Imports `config` (OPERATING_POINTS) and `detection.calibration`.
"""

from __future__ import annotations

import numpy as np

from cleannet_tf.config import OPERATING_POINTS  # noqa: F401  (offered here, the config's choices)
from cleannet_tf.detection.calibration import as_scores, as_verification

NOISE_RATE_LIMITS = (1e-3, 1.0 - 1e-3)  # pi_c stays inside: a class with no wrong label is not certain


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-12, 1.0 - 1e-12)
    return np.log(p) - np.log1p(-p)


def prior_offsets(probabilities, labels, *, num_classes: int, calibration_noise_rate: float, verification=None,
                  iterations: int = 200, tolerance: float = 1e-7) -> tuple[np.ndarray, np.ndarray]:
    """Per-class logit offsets that move P(label correct) from the calibration rows' prior to each class's own.

    Args:
        probabilities: (N,) P(label correct), calibrated on rows whose share of wrong labels is
            `calibration_noise_rate` (pi_0, in (0, 1)).
        labels: (N,) class ids in [0, num_classes).
        verification: optional (N,) 1 / 0 / -1: verified pairs are left out of the EM (their label is known).

    Returns:
        ((C,) float64 offsets d_c for shift_probabilities, 0 for a class without unverified pairs;
         (C,) float64 estimated noise rates pi_c, NaN for such a class).
    """
    probabilities = as_scores(probabilities)
    labels = np.asarray(labels)
    if labels.shape != probabilities.shape:
        raise ValueError(f"labels must be (N,) like probabilities. Received {labels.shape}")
    if not 0.0 < calibration_noise_rate < 1.0:
        raise ValueError(f"calibration_noise_rate must be in (0, 1). Received {calibration_noise_rate}")
    unverified = np.ones(len(labels), bool) if verification is None else (
        as_verification(verification, probabilities.shape) < 0)
    base = _logit(1.0 - calibration_noise_rate)
    offsets = np.zeros(num_classes)
    rates = np.full(num_classes, np.nan)
    for c in range(num_classes):
        logits = _logit(probabilities[unverified & (labels == c)])
        if not len(logits):
            continue
        rate = calibration_noise_rate
        for _ in range(iterations):  # Saerens et al. 2002: E step (re-based posteriors), M step (their mean)
            shifted = 1.0 / (1.0 + np.exp(-(logits + _logit(1.0 - rate) - base)))
            new_rate = float(np.clip(np.mean(1.0 - shifted), *NOISE_RATE_LIMITS))
            if abs(new_rate - rate) < tolerance:
                rate = new_rate
                break
            rate = new_rate
        rates[c] = rate
        offsets[c] = _logit(1.0 - rate) - base
    return offsets, rates


def class_thresholds(offsets, *, scoring: str, calibration: tuple[float, float] | None = None) -> np.ndarray:
    """(C,) score thresholds: a pair of class c is flagged when its score is below thresholds[c], i.e. when
    sigmoid(a x(s) + b + d_c) < 1/2 (correct_probability with `calibration` (a, b), shifted by offsets (C,)).

    scoring: "stacked" (x = log((1 + s) / (1 - s)); without calibration P = (s + 1) / 2, a = 1, b = 0), or
    "cosine" / "margin" (x = s; they need a calibration).
    """
    offsets = np.asarray(offsets, np.float64)
    if calibration is None:
        if scoring != "stacked":
            raise ValueError(f"scoring={scoring!r} needs a calibration for the calibrated operating point.")
        a, b = 1.0, 0.0
    else:
        a, b = calibration
    if not a > 0:
        raise ValueError(f"The calibration must increase with the score (a > 0). Received a={a}")
    x = -(b + offsets) / a
    return np.tanh(x / 2.0) if scoring == "stacked" else x  # s with log((1 + s) / (1 - s)) = x: tanh(x / 2)


def calibrated_operating_point(probabilities, labels, *, num_classes: int, scoring: str,
                               calibration_noise_rate: float, calibration: tuple[float, float] | None = None,
                               verification=None) -> dict:
    """The calibrated operating point of the pool: prior_offsets on its P(label correct) (N,) (correct_probability
    of the scores with `calibration`) and labels (N,), then class_thresholds.

    Returns {"class_thresholds": (C,), "offsets": (C,), "noise_rates": (C,)} (float64 arrays).
    """
    offsets, rates = prior_offsets(probabilities, labels, num_classes=num_classes,
                                   calibration_noise_rate=calibration_noise_rate, verification=verification)
    return {"class_thresholds": class_thresholds(offsets, scoring=scoring, calibration=calibration),
            "offsets": offsets, "noise_rates": rates}
