"""The plan step: with nothing verified yet, rank every image and plan what to verify -> WORKDIR/verify/.

cleannet-run takes it instead of train / verify / weighted_classifiers / export while the dataset has no verified
training or no verified validation rows (pipeline/table.py `missing_verification`); once the review's answers are merged
(WORKDIR/review/verified_train.tsv, verified_val.tsv), the next run skips it and runs those.

    scores.tsv     every pool image (pipeline/scores_tsv.py): score = the out-of-fold own-label margin of a linear
                   classifier of the noisy labels (detection/cold_start.py), noisy = margin < 0 (the classifier
                   prefers another class), weight_soft = max(0, min(1, margin)), p_correct NaN (not calibrated)
    to_verify.tsv  the plan in the order to verify, with a `split` column (pipeline/to_verify.py): per class a
                   random val share, the rest where a label is most informative (detection/cold_start.py)
    metrics.json   "calibrated": false and why; detection_error and the other figures null (nothing to measure
                   them on); the plan's size; per class images, share flagged, rows planned

Published as one set (atomic_io.staging_dir), as cleannet-verify's. Imports `data`, `detection`, `training`,
`pipeline` (artifacts, table, writers of verify/, workdir).
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.data import table as data_table
from cleannet_tf.detection import cold_start
from cleannet_tf.pipeline import scores_tsv, to_verify
from cleannet_tf.pipeline.artifacts import open_features
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import verify_dir
from cleannet_tf.training.pool import check_features

UNCALIBRATED = ("nothing verified yet: the score ranks the images but no verified row says where its threshold "
                "lies or how often it is right; verify the plan (to_verify.tsv) and run again")


def run_plan(config: ml_collections.ConfigDict, workdir: str, *, table: data_table.LabelTable | None = None) -> dict:
    """The plan step: WORKDIR/verify/{scores.tsv, to_verify.tsv, metrics.json}. Returns metrics.json's content."""
    table = table if table is not None else load_table(config, workdir)
    features = open_features(config, workdir, table)
    pool = np.nonzero(features.valid() & (table.split != data_table.SPLIT_TEST))[0]
    x = features.gather(pool)
    check_features(x, table.keys[pool])
    labels, class_names = table.labels[pool], np.asarray(table.class_names)
    scored = cold_start.out_of_fold_margin(x, labels, num_classes=table.num_classes, seed=config.seed)
    margin = scored["margin"]
    candidates = (table.verification[pool] < 0) & (table.split[pool] == data_table.SPLIT_TRAIN)
    size = cold_start.plan_size(int(candidates.sum()), table.num_classes, config.verify.plan_fraction)
    rows, splits, reasons = cold_start.plan_verification(labels, margin, num_classes=table.num_classes, size=size,
                                                         candidates=candidates, seed=config.seed)
    flagged = margin < 0
    images = np.bincount(labels, minlength=table.num_classes)
    planned = np.bincount(labels[rows], minlength=table.num_classes)
    report = {
        "calibrated": False, "uncalibrated_reason": UNCALIBRATED, "score": cold_start.SCORE_NAME,
        "threshold": 0.0, "threshold_rows": "none: margin < 0 (the classifier prefers another class), uncalibrated",
        "detection_error": None, "precision": None, "recall": None, "f1": None, "roc_auc": None, "n_val": 0,
        "detection_error_heldout": None, "roc_auc_heldout": None, "n_val_heldout": 0,
        "n_images": int(len(pool)), "n_flagged": int(flagged.sum()),
        "flagged_share": float(flagged.mean()) if len(pool) else None,
        "plan": {"rows": int(len(rows)), "val": int(np.sum(splits == "val")), "train": int(np.sum(splits == "train")),
                 "fraction": float(config.verify.plan_fraction), "file": "to_verify.tsv"},
        "class_names": list(table.class_names),
        "per_class": {name: {"images": int(images[c]), "heldout": bool(table.heldout_classes[c]),
                             "flagged_share": float(flagged[labels == c].mean()) if images[c] else None,
                             "planned": int(planned[c])} for c, name in enumerate(table.class_names)},
        "warnings": [],
    }
    with atomic_io.staging_dir(verify_dir(workdir)) as output_dir:  # published whole, replacing the last set
        scores_tsv.write_scores_tsv(os.path.join(output_dir, "scores.tsv"), scores_tsv.ScoresTable(
            keys=table.keys[pool], labels=class_names[labels], scores=margin, noisy=flagged,
            weight_soft=np.clip(margin, 0.0, 1.0), weight_hard=~flagged,
            suggested_labels=class_names[scored["suggested_label"]], suggested_scores=scored["suggested_score"],
            p_correct=np.full(len(pool), np.nan, np.float32), rank_score=margin))
        to_verify.write_verification_tsv(
            os.path.join(output_dir, "to_verify.tsv"), table.keys[pool][rows], ~flagged[rows], scores=margin[rows],
            suggested_labels=class_names[scored["suggested_label"][rows]], reasons=reasons, splits=splits)
        atomic_io.write_json(os.path.join(output_dir, "metrics.json"), report)
    logging.info("plan: nothing verified yet; %d of %d images ranked below the uncalibrated boundary; %d to verify "
                 "(%d val, %d train) in %s.", report["n_flagged"], len(pool), len(rows), report["plan"]["val"],
                 report["plan"]["train"], os.path.join(verify_dir(workdir), "to_verify.tsv"))
    return report
