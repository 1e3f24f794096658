"""The verifier of a trained CleanNet and its threshold: fit_verifier, and metrics.json's numbers (detection_report).

The stacked weights and the threshold (the lowest detection error) are chosen on verified_train rows
(verified_rows: the calibration classes' when the score uses CleanNet's signals), never on the verified_val
rows the figures are measured on; metrics.json names the rows of each figure (METRIC_ROWS). Held-out classes
are scored with the same threshold and reported apart. The cleannet-verify step that writes
WORKDIR/verify/ is pipeline/verify.py.

Imports `data`, `detection`, `features`, `model`.
"""

from __future__ import annotations

import keras
import numpy as np

from cleannet_tf import ops
from cleannet_tf.detection import label_noise, verifier
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model.cleannet import MODE_SCORING, encode_classes
from cleannet_tf.training import metrics
from cleannet_tf.training import pool as training_pool


def knn_index(x: np.ndarray, labels: np.ndarray, *, rows: int = verifier.INDEX_ROWS,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The kNN index stored in the verifier: every pool row, or a fixed sample of `rows` of them.

    x (P, D) unit rows, labels (P,) -> features (M, D) float32, labels (M,) int64, M = min(P, rows).
    """
    keep = np.arange(len(x)) if len(x) <= rows else np.sort(
        np.random.default_rng([seed, 0x1DE7]).choice(len(x), rows, replace=False))
    return np.asarray(x[keep], np.float32), np.asarray(labels[keep], np.int64)


def verified_rows(data: training_pool.TrainingData, calibration_classes: np.ndarray | None,
                  uses_cleannet: bool) -> tuple[np.ndarray, str]:
    """Pool rows the stacked weights and the threshold are chosen on, never the evaluated verified_val rows.

    CleanNet trains on the verified_train rows of the classes it sees, so when the score uses its signals the
    rows are the calibration classes' verified_train rows (verified classes CleanNet did not train on); else
    the verified classes' verified_train rows. Returns (rows, what they are).
    """
    train = data.verified_train[~data.heldout_classes[data.labels[data.verified_train]]]
    if uses_cleannet and calibration_classes is not None and calibration_classes.any():
        rows = train[calibration_classes[data.labels[train]]]
        if len(np.unique(data.verification[rows])) < 2:
            raise ValueError("The calibration classes' verified_train rows are all of one kind; raise "
                             "cleannet.calibration_fraction.")
        return rows, "verified_train of the calibration classes (verified classes CleanNet did not train on)"
    if len(train):
        return train, "verified_train of verified classes"
    rows = data.validation[~data.heldout_classes[data.labels[data.validation]]]
    if not len(rows):
        raise ValueError("No verified rows in verified classes: cleannet-verify needs verified_train.tsv (or "
                         "verified_val.tsv) rows to choose the threshold.")
    return rows, "verified_val of verified classes (no verified_train rows: the verified-class figures are optimistic)"


def fit_verifier(cleannet: keras.Model, data: training_pool.TrainingData, reference_sets: ReferenceSets, *,
                 mode: str, class_mean_keep: float = 0.7, calibration_classes: np.ndarray | None = None,
                 signals=verifier.SIGNAL_NAMES[:4], classifier_rounds: int = 0,
                 seed: int = 0) -> tuple[keras.Model, dict]:
    """The verifier of a trained CleanNet, its weights and threshold chosen on rows that are not evaluated.

    Args:
        cleannet: trained model. data: its training data (P pool rows). reference_sets: (C, K, D) references.
        mode: cleannet.mode ("paper" -> cosine, "robust" -> margin, "stacked" -> stacked scoring).
        class_mean_keep: share of each class in its robust mean (stacked scoring).
        calibration_classes: optional (C,) bool, verified classes CleanNet did not train on
            (training/cleannet.py calibration_classes); a stacked scoring that uses CleanNet's signals is
            fitted on their verified_train rows (see verified_rows).
        signals: the SIGNAL_NAMES the stacked scoring combines (the others get weight 0).
        classifier_rounds: refits of the linear classifier (when a classifier signal is used), each with rows
            weighted by the last stacked P(label correct), the fit rows by their verification
            (detection_signals.classifier_refit_weights), and the stacked weights fitted again.
    Returns:
        (verifier, info) with info["threshold"], info["scoring"], info["threshold_rows"] (which rows the
        threshold comes from), and for stacked info["fit_rows"], info["signal_weights"].
    """
    scoring = MODE_SCORING[mode]
    num_classes = len(reference_sets.class_names)
    class_embeddings = encode_classes(cleannet, reference_sets.references).numpy()
    x = ops.LogNormalizedRows(data.features)  # (P, D) log-normalised rows, computed block by block when read
    class_means = detection_signals.robust_class_means(x, data.labels, num_classes=num_classes, keep=class_mean_keep)
    signals = tuple(signals)
    if scoring == "stacked":
        unknown = set(signals) - set(verifier.SIGNAL_NAMES)
        if unknown or not signals:
            raise ValueError(f"verify.signals must be a non-empty subset of {verifier.SIGNAL_NAMES}. "
                             f"Received {signals}")
    uses_cleannet = scoring != "stacked" or bool(set(signals) & set(verifier.CLEANNET_SIGNALS))
    rows, rows_name = verified_rows(data, calibration_classes if scoring == "stacked" else None, uses_cleannet)
    verification = data.verification[rows]
    info: dict = {"scoring": scoring, "threshold_rows": rows_name, "n_threshold_rows": int(len(rows)),
                  "n_threshold_right": int(np.sum(verification == 1)),
                  "n_threshold_wrong": int(np.sum(verification == 0))}
    weights, bias = (0.0,) * len(verifier.SIGNAL_NAMES), 0.0
    extras = {}
    if scoring == "stacked":
        if len(np.unique(verification)) < 2:
            raise ValueError(f"Stacked scoring needs {rows_name} rows of both kinds (label correct and wrong); "
                             "use cleannet.mode=robust.")
        uses_classifier = bool(set(signals) & {"classifier_score", "classifier_margin"})
        if uses_classifier:
            extras["classifier"] = detection_signals.linear_classifier(x, data.labels, num_classes=num_classes)
        if "knn_agreement" in signals:
            extras["index"] = knn_index(x, data.labels, seed=seed)
        if calibration_classes is not None and calibration_classes.any() and uses_cleannet:
            info["calibration_classes"] = [data.class_names[c] for c in np.nonzero(calibration_classes)[0]]

        def stacked_weights() -> tuple[np.ndarray, float]:
            plain = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring,
                                            threshold=0.0, **extras)
            own_signals = verifier.own_class_signals(plain, data.features[rows], data.labels[rows], names=signals)
            used_weights, used_bias = verifier.fit_signal_weights(own_signals, verification, seed=seed)
            all_weights = np.zeros(len(verifier.SIGNAL_NAMES))
            all_weights[[verifier.SIGNAL_NAMES.index(name) for name in signals]] = used_weights
            return all_weights, used_bias

        weights, bias = stacked_weights()
        rounds = int(classifier_rounds) if uses_classifier else 0
        for _ in range(rounds):
            scored = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=0.0,
                                             signal_weights=weights, signal_bias=bias, **extras)
            pool_scores = verifier.class_scores(scored, data.features)[np.arange(len(data.labels)), data.labels]
            sample_weights = detection_signals.classifier_refit_weights((pool_scores + 1.0) / 2.0, rows, verification)
            extras["classifier"] = detection_signals.linear_classifier(x, data.labels, num_classes=num_classes,
                                                               sample_weights=sample_weights)
            weights, bias = stacked_weights()
        if uses_classifier:
            info["classifier_rounds"] = rounds
        info["fit_rows"] = rows_name
        info["n_fit"] = int(len(rows))
        info["signal_weights"] = dict(zip(verifier.SIGNAL_NAMES, map(float, weights), strict=True))
        info["signal_bias"] = bias
    model = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=0.0,
                                    signal_weights=weights, signal_bias=bias, **extras)
    scores = verifier.class_scores(model, data.features[rows])[np.arange(len(rows)), data.labels[rows]]
    threshold, _ = metrics.best_threshold(scores, verification)
    info["threshold"] = threshold
    # Platt calibration of P(label correct), served as weight_soft (the verifier holds it).
    rows = calibration_rows(data, calibration_classes)
    scores = verifier.class_scores(model, data.features[rows])[np.arange(len(rows)), data.labels[rows]]
    calibration, calibration_info = fit_probability_calibration(scores, data.verification[rows], scoring)
    info.update(calibration_info)
    model = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=threshold,
                                    signal_weights=weights, signal_bias=bias, calibration=calibration, **extras)
    return model, info


def calibration_rows(data: training_pool.TrainingData, calibration_classes: np.ndarray | None = None) -> np.ndarray:
    """Pool rows the probabilities are calibrated on: verified rows of verified classes that CleanNet did not train
    on (the validation rows, and the calibration classes' verified_train rows)."""
    verified_class = ~data.heldout_classes[data.labels]
    unseen = np.zeros(len(data.labels), bool)
    unseen[data.validation] = True
    if calibration_classes is not None:
        unseen |= calibration_classes[data.labels]
    return np.nonzero((data.verification >= 0) & verified_class & unseen)[0]


def fit_probability_calibration(scores: np.ndarray, verification: np.ndarray,
                                scoring: str) -> tuple[tuple[float, float] | None, dict]:
    """Platt scaling (label_noise.fit_calibration) on the scores (n,) of `calibration_rows` and their
    verification (n,) 0/1; None when those rows are all of one kind. Returns ((a, b) or None, how)."""
    if len(np.unique(verification)) < 2:
        return None, {"calibration": "stacked" if scoring == "stacked" else
                      "none (the verified rows are all of one kind)"}
    calibration = label_noise.fit_calibration(scores, verification, scoring=scoring)
    return calibration, {"calibration": "platt", "calibration_ab": list(calibration), "n_calibration": len(scores)}


def correct_probabilities(scores: np.ndarray, data: training_pool.TrainingData, scoring: str,
                          calibration_classes: np.ndarray | None = None) -> tuple[np.ndarray | None, dict]:
    """(P,) calibrated P(label correct) of the pool rows from their scores (None when it cannot be), and how.

    Platt scaling (label_noise.fit_calibration: of the stacked logit, or of the cosine / margin score) fitted on
    `calibration_rows`. The stacked scoring's own probability ((s + 1) / 2) is fitted on the calibration classes
    alone, whose noise rate need not be the others'; the refit on every verified class fixes its base rate.
    Verified rows of one kind only: the stacked probability as it is; for cosine and margin, None.
    fit_verifier fits the same calibration and stores it in the verifier (verifier.correct_probabilities).
    """
    rows = calibration_rows(data, calibration_classes)
    calibration, info = fit_probability_calibration(scores[rows], data.verification[rows], scoring)
    if calibration is None and scoring != "stacked":
        return None, info
    return label_noise.correct_probability(scores, scoring=scoring, calibration=calibration), info


def detection_report(scores: np.ndarray, data: training_pool.TrainingData, threshold: float,
                     probabilities: np.ndarray | None = None) -> dict:
    """metrics.json's numbers: scores (P,) of the pool rows at `threshold`.

    detection_* on the verified classes' validation rows, *_heldout on held-out classes' validation rows,
    *_all on both; per class: images, estimated noise rate, the share below the threshold, and on its
    validation rows the error and the verified noise rate. The noise-rate estimates (noise_rate_estimate, per
    class and overall) are the mean of 1 - probabilities (P,) (calibrated P(label correct); in a verified class
    with its own intercept, label_noise.class_offsets), each verified row counted as its label says
    (label_noise.estimate_noise_rates); without probabilities, the share below the threshold.
    """
    rows = data.validation
    labels, verification = data.labels[rows], data.verification[rows]
    heldout = data.heldout_classes[labels]
    report: dict = {"threshold": float(threshold)}
    for suffix, mask in (("", ~heldout), ("_heldout", heldout), ("_all", np.ones_like(heldout))):
        if mask.any():
            m = metrics.detection_metrics(scores[rows][mask], verification[mask], threshold)
            values = {"detection_error": m["error"], "precision": m["precision"], "recall": m["recall"],
                      "f1": m["f1"], "roc_auc": m["roc_auc"], "n_val": int(m["n"])}
        else:
            values = {"detection_error": None, "precision": None, "recall": None, "f1": None, "roc_auc": None,
                      "n_val": 0}
        report.update({name + suffix: value if name == "n_val" else _finite_or_none(value)
                       for name, value in values.items()})
    flagged = scores < threshold
    num_classes = len(data.class_names)
    images = np.bincount(data.labels, minlength=num_classes)
    flagged_per_class = np.bincount(data.labels, weights=flagged, minlength=num_classes)
    if probabilities is None:
        estimate, overall = flagged_per_class / np.maximum(images, 1), float(flagged.mean()) if len(flagged) else None
    else:
        # Per class: the class's verified rows refit its intercept (verified classes only; held-out: 0).
        offsets = label_noise.class_offsets(probabilities, data.labels, data.verification, num_classes=num_classes,
                                            classes=~data.heldout_classes)
        estimate, overall = label_noise.estimate_noise_rates(
            label_noise.shift_probabilities(probabilities, data.labels, offsets), data.labels,
            num_classes=num_classes, verification=data.verification)
    val_count = np.bincount(labels, minlength=num_classes)
    val_wrong = np.bincount(labels, weights=verification == 0, minlength=num_classes)
    val_error = metrics.per_class_error(scores[rows], verification, labels, threshold, num_classes)
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


