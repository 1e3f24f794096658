"""cleannet-verify: score every training image against its label with the best CleanNet -> WORKDIR/verify/.

    verifier.keras   the verifier model (features, label -> score, is_noisy, weight_soft, suggested_label, ...)
    scores.tsv       one row per image of the noisy pool (pipeline/scores_tsv.py)
    to_verify.tsv    the images a person should verify next, in verified_train.tsv's format (detection/to_verify.py)
    report.html      histogram, ROC / PR curves, noise rate per class, most suspicious images (pipeline/report.py)
    metrics.json     threshold, operating_point (verify.operating_point) and class_thresholds (each class's
                     threshold: at "calibrated" where its re-based P(label wrong) is 1/2, with prior_noise_rates;
                     at "threshold" the one threshold), detection error / precision / recall / F1 / ROC-AUC at
                     that operating point on verified validation rows
                     (verified classes) and on held-out classes' validation rows, per class, noise-rate estimates,
                     (the mean of 1 - P(label correct): the verifier's calibration, per verified class its own
                     intercept; pipeline/verify_metrics.py),
                     calibration_classes (cleannet.calibration_fraction; verified classes, not held out) and
                     warnings (sanity.detection_warnings: a detection barely better than flagging nothing, too
                     few verified rows for a stable threshold)

The stacked weights and the threshold (the lowest detection error) are chosen on verified_train rows
(detection/fit.py verified_rows: the calibration classes' when the score uses CleanNet's signals), never on the
verified_val rows the figures are measured on; metrics.json names the rows of each figure (metric_rows). When the
verified_train rows came from cleannet-review (a plan's or the proposals', chosen by score: table.py
train_rows_chosen_by_score), the threshold is where the Platt calibration fitted on the verified_val rows (a random
sample) gives P(label correct) = 1/2, the stacked weights are fitted on both kinds of rows, and detection_error is
cross-fitted on the verified_val rows (fit.py crossfit_error; detection_error_in_sample beside it).
The five files (and report.html's figures) are written to a temporary folder beside WORKDIR/verify/ and published
as one set (atomic_io.staging_dir): a kill at any moment leaves the previous complete set or the new one, never
a mix. Imports `data`, `features`, `detection`, `training`, `pipeline` (artifacts and the writers of verify/).
"""

from __future__ import annotations

import json
import os

import keras
import ml_collections
import numpy as np
from absl import logging

from cleannet_tf import atomic_io, sanity
from cleannet_tf.data import table as data_table
from cleannet_tf.detection import verifier
from cleannet_tf.detection.calibration import correct_probabilities
from cleannet_tf.detection.fit import fit_verifier
from cleannet_tf.pipeline import report as report_lib
from cleannet_tf.pipeline import scores_tsv, to_verify
from cleannet_tf.pipeline.artifacts import load_training_inputs
from cleannet_tf.pipeline.table import load_table, train_rows_chosen_by_score
from cleannet_tf.pipeline.verify_metrics import METRIC_ROWS, detection_report
from cleannet_tf.pipeline.workdir import classifier_dir, cleannet_dir, verify_dir
from cleannet_tf.training import checkpointing
from cleannet_tf.training import cleannet as cleannet_training
from cleannet_tf.training import pool as training_pool


def run_verify(config: ml_collections.ConfigDict, workdir: str, *, table: data_table.LabelTable | None = None) -> dict:
    """cleannet-verify: WORKDIR/cleannet/model.keras scores every pool image -> WORKDIR/verify/. Returns metrics."""
    table = table if table is not None else load_table(config, workdir)
    data, reference_sets = load_training_inputs(config, workdir, table)
    cleannet_path = os.path.join(cleannet_dir(workdir), "model.keras")
    if not os.path.exists(cleannet_path):
        raise FileNotFoundError(f"{cleannet_path} not found: run cleannet-train first.")
    cleannet = keras.saving.load_model(cleannet_path)
    calibration = cleannet_training.calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
    model, info = fit_verifier(cleannet, data, reference_sets, mode=config.cleannet.mode,
                               class_mean_keep=config.verify.class_mean_keep, calibration_classes=calibration,
                               signals=tuple(config.verify.signals),
                               classifier_rounds=config.verify.classifier_rounds,
                               operating_point=config.verify.operating_point, seed=config.seed,
                               chosen_by_score=train_rows_chosen_by_score(table, config, workdir))
    info["calibration_classes"] = cleannet_training.log_calibration_classes(  # none are held out (data.heldout_list)
        table.class_names, calibration, config.cleannet.calibration_fraction)
    info["features_warnings"] = _features_warnings(config, workdir)  # the report repeats them
    threshold = info["threshold"]
    # Batch by batch: (P,) arrays only, no (P, C) matrix. The stacked logit (rank_score) orders the images
    # whose scores saturate (float32 2 sigmoid - 1 is -1 below logit -17).
    scored = verifier.own_label_scores(model, data.features, data.labels)
    with atomic_io.staging_dir(verify_dir(workdir)) as output_dir:  # published whole, replacing the last set
        report = _write_outputs(output_dir, config, table, data, model, info, scored["score"],
                                scored["suggested_score"], scored["suggested_label"],
                                rank_scores=scored["rank_score"])
    logging.info("cleannet-verify: threshold %.4f, detection error %s (held-out %s), %d of %d images flagged.",
                 threshold, report["detection_error"], report["detection_error_heldout"], report["n_flagged"],
                 report["n_images"])
    return report


def _rank_threshold(info: dict, thresholds: np.ndarray) -> np.ndarray:
    """Score thresholds (P,) in the units of the rank scores (the stacked logit; the score itself otherwise)."""
    if info["scoring"] != "stacked":
        return thresholds
    p = np.clip((thresholds + 1.0) / 2.0, 1e-12, 1 - 1e-12)
    return verifier.STACKED_TEMPERATURE * np.log(p / (1 - p))


def _features_warnings(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The sanity warnings of WORKDIR/classifier/metrics.json when its backbone made the features, else []."""
    path = os.path.join(classifier_dir(workdir), "metrics.json")
    if config.model.weights != "classifier" or config.data.features or not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f).get("warnings", [])


def _write_outputs(output_dir: str, config: ml_collections.ConfigDict, table: data_table.LabelTable,
                   data: training_pool.TrainingData, model: keras.Model, info: dict, scores: np.ndarray,
                   suggested_scores: np.ndarray, suggested: np.ndarray,
                   rank_scores: np.ndarray | None = None) -> dict:
    """scores.tsv, verifier.keras, metrics.json, to_verify.tsv, report.html into output_dir; returns the metrics.

    scores, suggested_scores (P,) float32, suggested (P,) int: each pool row's own-label score, best class and
    its score (verifier.own_label_scores).
    """
    # Each pair's threshold: its class's (verify.operating_point "calibrated"), or the one threshold.
    thresholds = verifier.verification_head_of(model).pair_thresholds(data.labels)
    class_names = np.asarray(data.class_names)
    head = verifier.verification_head_of(model)  # the verifier's calibration (fit_verifier)
    probabilities = correct_probabilities(scores, scoring=head.scoring, calibration=head.calibration)
    # The soft weight: the calibrated P(label correct); in paper mode the paper's max(0, cos) (= its weight_soft).
    paper = info["scoring"] == "cosine" or probabilities is None
    weight_soft = np.clip(scores, 0.0, 1.0) if paper else probabilities
    scores_tsv.write_scores_tsv(os.path.join(output_dir, "scores.tsv"), scores_tsv.ScoresTable(
        keys=table.keys[data.table_rows], labels=class_names[data.labels], scores=scores,
        noisy=scores < thresholds, weight_soft=weight_soft, weight_hard=scores >= thresholds,
        suggested_labels=class_names[suggested], suggested_scores=suggested_scores,
        p_correct=probabilities if probabilities is not None else np.full(len(scores), np.nan),
        rank_score=rank_scores))
    checkpointing.save_model(model, os.path.join(output_dir, "verifier.keras"))
    report = {"mode": config.cleannet.mode, "calibrated": True, **info,
              **detection_report(scores, data, thresholds, probabilities),
              "n_images": int(len(scores)), "n_flagged": int(np.sum(scores < thresholds)),
              "class_names": list(data.class_names), "metric_rows": METRIC_ROWS}
    for name in report["calibration_classes"]:
        report["per_class"][name]["calibration"] = True
    if info.get("detection_error_crossfit") is not None:  # val rows helped fit: each scored by a fit without it
        report["detection_error_in_sample"] = report["detection_error"]
        report["detection_error"] = info["detection_error_crossfit"]
        report["metric_rows"] = {**METRIC_ROWS, "detection_error": "verified_val of verified classes, cross-fitted "
                                 "(5 folds: stacked weights and threshold fitted without the fold)"}
    seen = data.validation[~data.heldout_classes[data.labels[data.validation]]]  # the rows the figures come from
    report["warnings"] = sanity.log(sanity.detection_warnings(
        detection_error=report["detection_error"], verification=data.verification[seen],
        threshold_counts=(info["n_threshold_right"], info["n_threshold_wrong"]), threshold_rows=info["threshold_rows"]))
    checkpointing.write_json(os.path.join(output_dir, "metrics.json"), report)

    train_rows = table.split[data.table_rows] == data_table.SPLIT_TRAIN
    keys = table.keys[data.table_rows]
    proposals = to_verify.propose_verification(
        data.labels, scores, np.where(train_rows, data.verification, -1), threshold=thresholds,
        budget_per_class=config.verify.budget_per_class, num_classes=len(class_names),
        candidates=train_rows & (data.verification < 0), rank_scores=rank_scores,
        rank_threshold=None if rank_scores is None else _rank_threshold(info, thresholds))
    has_verification = np.bincount(data.labels[train_rows & (data.verification >= 0)],
                                   minlength=len(class_names)) > 0
    to_verify.write_verification_tsv(
        os.path.join(output_dir, "to_verify.tsv"), keys[proposals], scores[proposals] >= thresholds[proposals],
        scores=scores[proposals], suggested_labels=class_names[suggested[proposals]],
        reasons=["class has no verified label" if not has_verification[c] else "near the threshold"
                 for c in data.labels[proposals]])
    validation = np.zeros(len(scores), bool)
    validation[data.validation] = True
    report_lib.write_report(
        output_dir, keys=keys, labels=data.labels, scores=scores, verification=data.verification,
        validation=validation, threshold=thresholds, class_names=class_names,
        image_paths=table.paths[data.table_rows], suggested_labels=suggested,
        suggested_scores=suggested_scores, metrics=report,
        worst_classes=config.verify.report_classes, rank_scores=rank_scores)
    return report
