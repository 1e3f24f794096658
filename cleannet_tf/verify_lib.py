"""cleannet-verify: score every training image against its label with the best CleanNet -> WORKDIR/verify/.

    verifier.keras   the verifier model (features, label -> score, is_noisy, weight_soft, suggested_label, ...)
    scores.tsv       one row per image of the noisy pool (scores_io)
    to_verify.tsv    the images a person should verify next, in verified_train.tsv's format (active_verification)
    report.html      histogram, ROC / PR curves, noise rate per class, most suspicious images (report.py)
    metrics.json     threshold, detection error / precision / recall / F1 / ROC-AUC on verified validation rows
                     (verified classes) and on held-out classes' validation rows, per class, noise-rate estimates,
                     calibration_classes (cleannet.calibration_fraction; verified classes, not held out) and
                     warnings (sanity.detection_warnings: a detection barely better than flagging nothing, too
                     few verified rows for a stable threshold)

The threshold is the one with the lowest detection error on the verified classes' validation rows; held-out
classes are scored with the same threshold and reported apart. The five files (and report.html's figures) are
written to a temporary folder beside WORKDIR/verify/ and published as one set (atomic_io.staging_dir): a kill at
any moment leaves the previous complete set or the new one, never a mix.
"""

from __future__ import annotations

import json
import os

import keras
import ml_collections
import numpy as np
from absl import logging

from cleannet_tf import (
    active_verification,
    atomic_io,
    checkpointing,
    classifier_lib,
    datasets,
    detectors,
    metrics,
    sanity,
    scores_io,
    train_data,
    train_lib,
    verifier,
)
from cleannet_tf import config as config_lib
from cleannet_tf import report as report_lib
from cleannet_tf.model import encode_classes
from cleannet_tf.references import ReferenceSets


def verify_dir(workdir: str) -> str:
    return os.path.join(workdir, "verify")


def verifier_path(workdir: str) -> str:
    return os.path.join(verify_dir(workdir), "verifier.keras")


def fit_verifier(cleannet: keras.Model, data: train_data.TrainingData, reference_sets: ReferenceSets, *,
                 mode: str, class_mean_keep: float = 0.7, calibration_classes: np.ndarray | None = None,
                 signals=verifier.SIGNAL_NAMES, seed: int = 0) -> tuple[keras.Model, dict]:
    """The verifier of a trained CleanNet, its threshold chosen on the verified classes' validation rows.

    Args:
        cleannet: trained model. data: its training data (P pool rows). reference_sets: (C, K, D) references.
        mode: cleannet.mode ("paper" -> cosine, "robust" -> margin, "stacked" -> stacked scoring).
        class_mean_keep: share of each class in its robust mean (stacked scoring).
        calibration_classes: optional (C,) bool, verified classes CleanNet did not train on
            (train_lib.calibration_classes); the stacked scoring is fitted on their verified rows (train and
            validation), else on the verified validation rows.
        signals: the SIGNAL_NAMES the stacked scoring combines (the others get weight 0).
    Returns:
        (verifier, info) with info["threshold"], info["scoring"] and, for stacked, info["signal_weights"].
    """
    scoring = verifier.MODE_SCORING[mode]
    num_classes = len(reference_sets.class_names)
    class_embeddings = encode_classes(cleannet, reference_sets.references).numpy()
    class_means = detectors.robust_class_means(detectors.log_normalize(data.features), data.labels,
                                               num_classes=num_classes, keep=class_mean_keep)
    rows = data.validation[~data.heldout_classes[data.labels[data.validation]]]
    if not len(rows):
        raise ValueError("No verified validation rows in verified classes: cleannet-verify needs them to choose "
                         "the threshold (verified_val.tsv).")
    verification = data.verification[rows]
    info: dict = {"scoring": scoring}
    weights, bias = (0.0,) * len(verifier.SIGNAL_NAMES), 0.0
    if scoring == "stacked":
        if len(np.unique(verification)) < 2:
            raise ValueError("Stacked scoring needs verified validation rows of both kinds (label correct and "
                             "wrong); use cleannet.mode=robust.")
        fit_rows = rows
        if calibration_classes is not None and calibration_classes.any():
            fit_rows = np.nonzero((data.verification >= 0) & calibration_classes[data.labels])[0]
            if len(np.unique(data.verification[fit_rows])) < 2:
                raise ValueError("The calibration classes' verified rows are all of one kind; raise "
                                 "cleannet.calibration_fraction.")
            info["calibration_classes"] = [data.class_names[c] for c in np.nonzero(calibration_classes)[0]]
        plain = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=0.0)
        unknown = set(signals) - set(verifier.SIGNAL_NAMES)
        if unknown or not signals:
            raise ValueError(f"verify.signals must be a non-empty subset of {verifier.SIGNAL_NAMES}. "
                             f"Received {tuple(signals)}")
        used = [verifier.SIGNAL_NAMES.index(name) for name in signals]
        own_signals = verifier.own_class_signals(plain, data.features[fit_rows], data.labels[fit_rows])
        used_weights, bias = verifier.fit_signal_weights(own_signals[:, used], data.verification[fit_rows],
                                                         seed=seed)
        weights = np.zeros(len(verifier.SIGNAL_NAMES))
        weights[used] = used_weights
        info["n_fit"] = int(len(fit_rows))
        info["signal_weights"] = dict(zip(verifier.SIGNAL_NAMES, map(float, weights), strict=True))
        info["signal_bias"] = bias
    model = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=0.0,
                                    signal_weights=weights, signal_bias=bias)
    scores = verifier.class_scores(model, data.features[rows])[np.arange(len(rows)), data.labels[rows]]
    threshold, _ = metrics.best_threshold(scores, verification)
    info["threshold"] = threshold
    model = verifier.build_verifier(cleannet, class_embeddings, class_means, scoring=scoring, threshold=threshold,
                                    signal_weights=weights, signal_bias=bias)
    return model, info


def load_verifier(workdir: str) -> tuple[keras.Model, list[str], float]:
    """(verifier model, class names, threshold) that cleannet-verify wrote to WORKDIR/verify/."""
    path = verifier_path(workdir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: run cleannet-verify first.")
    model = keras.saving.load_model(path)
    head = verifier.verification_head_of(model)
    class_names = ReferenceSets.load(os.path.join(workdir, "references.npz")).class_names
    return model, list(class_names), head.threshold


def detection_report(scores: np.ndarray, data: train_data.TrainingData, threshold: float) -> dict:
    """metrics.json's numbers: scores (P,) of the pool rows at `threshold`.

    detection_* on the verified classes' validation rows, *_heldout on held-out classes' validation rows,
    *_all on both; per class: images, estimated noise rate (share below the threshold), and on its
    validation rows the error and the verified noise rate.
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
    val_count = np.bincount(labels, minlength=num_classes)
    val_wrong = np.bincount(labels, weights=verification == 0, minlength=num_classes)
    val_error = metrics.per_class_error(scores[rows], verification, labels, threshold, num_classes)
    per_class = {}
    for c, name in enumerate(data.class_names):
        per_class[name] = {
            "images": int(images[c]), "heldout": bool(data.heldout_classes[c]),
            "noise_rate_estimate": float(flagged_per_class[c] / images[c]) if images[c] else None,
            "n_val": int(val_count[c]),
            "noise_rate_verified": float(val_wrong[c] / val_count[c]) if val_count[c] else None,
            "detection_error": _finite_or_none(val_error[c]),
        }
    report["noise_rate_estimate"] = float(flagged.mean()) if len(flagged) else None
    report["per_class"] = per_class
    return report


def _finite_or_none(value):
    return float(value) if value is not None and np.isfinite(value) else None


def run_verify(config: ml_collections.ConfigDict, workdir: str, *, table: datasets.LabelTable | None = None) -> dict:
    """cleannet-verify: WORKDIR/cleannet/model.keras scores every pool image -> WORKDIR/verify/. Returns metrics."""
    table = table if table is not None else datasets.load_table(config, workdir)
    data, reference_sets = train_lib.load_training_inputs(config, workdir, table)
    cleannet_path = os.path.join(train_lib.cleannet_dir(workdir), "model.keras")
    if not os.path.exists(cleannet_path):
        raise FileNotFoundError(f"{cleannet_path} not found: run cleannet-train first.")
    cleannet = keras.saving.load_model(cleannet_path)
    calibration = train_lib.calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
    model, info = fit_verifier(cleannet, data, reference_sets, mode=config.cleannet.mode,
                               class_mean_keep=config.verify.class_mean_keep, calibration_classes=calibration,
                               signals=config_lib.split_names(config.verify.signals),
                               seed=config.seed)
    info["calibration_classes"] = train_lib.log_calibration_classes(  # none are held out (data.heldout_list)
        table.class_names, calibration, config.cleannet.calibration_fraction)
    info["features_warnings"] = _features_warnings(config, workdir)  # the report repeats them
    threshold = info["threshold"]
    all_scores = verifier.class_scores(model, data.features)  # (P, C)
    scores = all_scores[np.arange(len(data.labels)), data.labels]
    suggested = all_scores.argmax(axis=1)
    with atomic_io.staging_dir(verify_dir(workdir)) as output_dir:  # published whole, replacing the last set
        report = _write_outputs(output_dir, config, table, data, model, info, scores, all_scores, suggested)
    logging.info("cleannet-verify: threshold %.4f, detection error %s (held-out %s), %d of %d images flagged.",
                 threshold, report["detection_error"], report["detection_error_heldout"], report["n_flagged"],
                 report["n_images"])
    return report


def _features_warnings(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The sanity warnings of WORKDIR/classifier/metrics.json when its backbone made the features, else []."""
    path = os.path.join(classifier_lib.classifier_dir(workdir), "metrics.json")
    if config.model.weights != "classifier" or config.data.features or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f).get("warnings", [])


def _write_outputs(output_dir: str, config: ml_collections.ConfigDict, table: datasets.LabelTable,
                   data: train_data.TrainingData, model: keras.Model, info: dict, scores: np.ndarray,
                   all_scores: np.ndarray, suggested: np.ndarray) -> dict:
    """scores.tsv, verifier.keras, metrics.json, to_verify.tsv, report.html into output_dir; returns the metrics."""
    threshold = info["threshold"]
    pool = np.arange(len(data.labels))
    class_names = np.asarray(data.class_names)
    scores_io.write_scores_tsv(os.path.join(output_dir, "scores.tsv"), scores_io.ScoresTable(
        keys=table.keys[data.table_rows], labels=class_names[data.labels], scores=scores,
        noisy=scores < threshold, weight_soft=np.clip(scores, 0.0, 1.0), weight_hard=scores >= threshold,
        suggested_labels=class_names[suggested], suggested_scores=all_scores[pool, suggested]))
    checkpointing.save_model(model, os.path.join(output_dir, "verifier.keras"))
    report = {"mode": config.cleannet.mode, **info, **detection_report(scores, data, threshold),
              "n_images": int(len(scores)), "n_flagged": int(np.sum(scores < threshold)),
              "class_names": list(data.class_names)}
    for name in report["calibration_classes"]:
        report["per_class"][name]["calibration"] = True
    seen = data.validation[~data.heldout_classes[data.labels[data.validation]]]  # the rows choosing the threshold
    report["warnings"] = sanity.log(sanity.detection_warnings(detection_error=report["detection_error"],
                                                              verification=data.verification[seen]))
    checkpointing.write_json(os.path.join(output_dir, "metrics.json"), report)

    train_rows = table.split[data.table_rows] == datasets.SPLIT_TRAIN
    keys = table.keys[data.table_rows]
    proposals = active_verification.propose_verification(
        data.labels, scores, np.where(train_rows, data.verification, -1), threshold=threshold,
        budget_per_class=config.verify.budget_per_class, num_classes=len(class_names),
        candidates=train_rows & (data.verification < 0))
    has_verification = np.bincount(data.labels[train_rows & (data.verification >= 0)],
                                   minlength=len(class_names)) > 0
    active_verification.write_verification_tsv(
        os.path.join(output_dir, "to_verify.tsv"), keys[proposals], scores[proposals] >= threshold,
        scores=scores[proposals], suggested_labels=class_names[suggested[proposals]],
        reasons=["class has no verified label" if not has_verification[c] else "near the threshold"
                 for c in data.labels[proposals]])
    validation = np.zeros(len(scores), bool)
    validation[data.validation] = True
    report_lib.write_report(
        output_dir, keys=keys, labels=data.labels, scores=scores, verification=data.verification,
        validation=validation, threshold=threshold, class_names=class_names,
        image_paths=table.paths[data.table_rows], suggested_labels=suggested,
        suggested_scores=all_scores[pool, suggested], metrics=report,
        worst_classes=config.verify.report_classes)
    return report
