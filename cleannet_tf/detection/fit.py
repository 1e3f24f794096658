"""Fitting the verifier of a trained CleanNet: its stacked weights, threshold and calibration (fit_verifier).

The stacked weights and the threshold (the lowest detection error) are chosen on verified_train rows
(verified_rows: the calibration classes' when the score uses CleanNet's signals), never on the verified_val
rows the figures are measured on (pipeline/verify_metrics.py). The weights: stacking.py; the Platt
calibration: calibration.py; the Keras model they go in: verifier.py.

Imports `detection`, `features`, `model`, `training`.
"""

from __future__ import annotations

import keras
import numpy as np

from cleannet_tf import ops
from cleannet_tf.detection import operating_point, stacking, verifier
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.detection.calibration import (
    calibration_rows,
    correct_probability,
    fit_calibration,
    fit_probability_calibration,
    half_probability_score,
)
from cleannet_tf.detection.operating_point import OPERATING_POINTS
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
                 signals=verifier.SIGNAL_NAMES[:4], classifier_rounds: int = 0, operating_point: str = "threshold",
                 seed: int = 0, chosen_by_score: bool = False) -> tuple[keras.Model, dict]:
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
        chosen_by_score: the verified_train rows were chosen by score (a verification plan, proposals near the
            threshold), not at random: their best threshold is not the pool's. The threshold is then where the
            Platt calibration fitted on the verified classes' verified_val rows (a random sample) gives
            P(label correct) = 1/2, and the calibration is fitted on those rows alone.
        operating_point: "threshold" (score < info["threshold"] in every class), "probability" (stacked: the
            stacked P(label wrong) > 1/2, i.e. score < 0, in every class) or "calibrated" (P(label wrong) > 1/2
            with each class's own prior, fit_operating_point); the verifier's is_noisy follows it.
    Returns:
        (verifier, info) with info["threshold"], info["operating_point"], info["class_thresholds"] ((C,) list:
        the threshold of each class's pairs), info["scoring"], info["threshold_rows"] (which rows the
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
    refit_rows = rows  # the rows whose verification weighs the classifier refit
    val_rows = data.validation[~data.heldout_classes[data.labels[data.validation]]]
    chosen_by_score = chosen_by_score and len(np.unique(data.verification[val_rows])) == 2
    if chosen_by_score and scoring == "stacked":  # few rows chosen by score: the stacked weights see val too
        rows = np.concatenate([rows, val_rows])
        rows_name += " and verified_val of verified classes (the verified_train rows were chosen by score)"
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
            used_weights, used_bias = stacking.fit_signal_weights(own_signals, verification, seed=seed)
            all_weights = np.zeros(len(verifier.SIGNAL_NAMES))
            all_weights[[verifier.SIGNAL_NAMES.index(name) for name in signals]] = used_weights
            return all_weights, used_bias

        weights, bias = stacked_weights()
        rounds = int(classifier_rounds) if uses_classifier else 0
        for _ in range(rounds):
            scored = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=0.0,
                                             signal_weights=weights, signal_bias=bias, **extras)
            pool_scores = verifier.class_scores(scored, data.features)[np.arange(len(data.labels)), data.labels]
            sample_weights = detection_signals.classifier_refit_weights((pool_scores + 1.0) / 2.0, refit_rows,
                                                                        data.verification[refit_rows])
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
    if operating_point not in OPERATING_POINTS:
        raise ValueError(f"operating_point must be one of {OPERATING_POINTS}. Received {operating_point!r}")
    if operating_point == "probability":
        if scoring != "stacked":
            raise ValueError(f"operating_point='probability' needs the stacked scoring. Received mode={mode!r}")
        threshold = 0.0  # the stacked score is 2 P(label correct) - 1, fitted on the rows above: P = 1/2
        info["threshold_rows"] = f"{rows_name}: where the stacked P(label correct) fitted on them is 1/2"
    fit_rows = rows
    # Platt calibration of P(label correct), served as weight_soft (the verifier holds it): rows of the verified
    # classes; after a plan, the verified_val rows alone (the train rows were chosen by score).
    rows = calibration_rows(data, None if chosen_by_score else calibration_classes)
    scores = verifier.class_scores(model, data.features[rows])[np.arange(len(rows)), data.labels[rows]]
    calibration, calibration_info = fit_probability_calibration(scores, data.verification[rows], scoring)
    info.update(calibration_info)
    half = half_probability_score(calibration, scoring) if chosen_by_score and calibration is not None else None
    if half is not None:
        threshold = half
        plain = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=0.0,
                                        **extras)
        cross = fit_rows if scoring == "stacked" else val_rows  # stacked: its weights saw the val rows too
        fit_signals = (verifier.own_class_signals(plain, data.features[cross], data.labels[cross],
                                                  names=signals) if scoring == "stacked" else None)
        info["detection_error_crossfit"] = crossfit_error(
            fit_signals, data.verification[cross], np.flatnonzero(np.isin(cross, val_rows)),
            scores=None if scoring == "stacked" else verifier.class_scores(model, data.features[cross])[
                np.arange(len(cross)), data.labels[cross]], seed=seed)
        info.update({"threshold_rows": "verified_val of verified classes: where their Platt-calibrated P(label "
                                       "correct) is 1/2 (the verified_train rows were chosen by score)",
                     "n_threshold_rows": int(len(rows)), "n_threshold_right": int(np.sum(data.verification[rows] == 1)),
                     "n_threshold_wrong": int(np.sum(data.verification[rows] == 0))})
    info["threshold"] = threshold
    class_thresholds = None
    if operating_point == "calibrated":
        point = fit_operating_point(model, data, fit_rows, scoring)
        class_thresholds = point.pop("class_thresholds")
        info.update(point)
    info["operating_point"] = operating_point
    info["class_thresholds"] = [threshold] * num_classes if class_thresholds is None else class_thresholds
    model = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=threshold,
                                    signal_weights=weights, signal_bias=bias, calibration=calibration,
                                    class_thresholds=class_thresholds, **extras)
    return model, info


def crossfit_error(signals: np.ndarray | None, verification: np.ndarray, val: np.ndarray, *,
                   scores: np.ndarray | None = None, folds: int = 5, seed: int = 0) -> float | None:
    """The detection error of the val rows, each scored by stacked weights and a threshold fitted without it.

    signals (n, F) of the n fit rows (stacked: the weights are refitted per fold on the other rows), or scores (n,)
    (cosine / margin: fixed); verification (n,) 0/1; val: positions of the val rows among them. Per fold the
    threshold is where the Platt calibration on the other val rows gives P(label correct) = 1/2, as fit_verifier
    chooses it. None when a fold's rows are of one kind.
    """
    fold = np.random.default_rng([seed, 0xC5F]).permutation(len(val)) % folds
    errors = 0
    for k in range(folds):
        held, kept = val[fold == k], val[fold != k]
        fit = np.setdiff1d(np.arange(len(verification)), held)
        if len(np.unique(verification[kept])) < 2 or len(np.unique(verification[fit])) < 2:
            return None
        if signals is not None:
            weights, bias = stacking.fit_signal_weights(signals[fit], verification[fit], seed=seed)
            inputs = signals @ weights + bias  # the stacked logit
        else:
            inputs = np.asarray(scores, np.float64)
        a, b = fit_calibration(inputs[kept], verification[kept], scoring="margin")  # identity input
        threshold = -b / a if a > 0 else np.inf
        errors += int(np.sum((inputs[held] < threshold) != (verification[held] == 0)))
    return errors / len(val)


def fit_operating_point(model: keras.Model, data: training_pool.TrainingData, rows: np.ndarray,
                        scoring: str) -> dict:
    """The calibrated operating point (operating_point.py) of a verifier whose score was fitted on `rows` (the
    threshold rows): P(label correct) calibrated on those rows (the stacked logistic regression's own, fitted
    there; Platt scaling of a cosine or margin score), its prior their share of wrong labels, re-based per class
    on the class's unverified pool rows (EM). Verified rows (the evaluated verified_val ones too) are not used.

    Returns {"class_thresholds": (C,) list, "calibration_noise_rate", "prior_noise_rates" (C,) list (None where
    a class has no unverified row), "prior_offsets" (C,) list}.
    """
    verification = data.verification[rows]
    scored = verifier.own_label_scores(model, data.features, data.labels)
    calibration = None
    if scoring == "stacked":  # sigmoid of the logit: no float32 saturation of s = 2 P - 1
        probabilities = 1.0 / (1.0 + np.exp(-scored["rank_score"] / verifier.STACKED_TEMPERATURE))
    else:
        calibration = fit_calibration(scored["score"][rows], verification, scoring=scoring)
        probabilities = correct_probability(scored["score"], scoring=scoring, calibration=calibration)
    noise_rate = float(np.clip(np.mean(verification == 0), *operating_point.NOISE_RATE_LIMITS))
    point = operating_point.calibrated_operating_point(
        probabilities, data.labels, num_classes=len(data.class_names), scoring=scoring,
        calibration_noise_rate=noise_rate, calibration=calibration, verification=data.verification)
    return {"class_thresholds": [float(t) for t in point["class_thresholds"]], "calibration_noise_rate": noise_rate,
            "prior_noise_rates": [None if np.isnan(r) else float(r) for r in point["noise_rates"]],
            "prior_offsets": [float(d) for d in point["offsets"]]}


