"""cleannet-verify (cleannet_tf/pipeline/verify.py): scores, thresholds, suggested labels, outputs on disk."""

import json
import os

import numpy as np
import pytest
from conftest import small_train_config, write_feature_dataset

from cleannet_tf import sanity
from cleannet_tf.data import table as data_table
from cleannet_tf.detection import fit, verifier
from cleannet_tf.pipeline import records, scores_tsv
from cleannet_tf.pipeline.artifacts import load_training_inputs, load_verifier
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.train import run_train
from cleannet_tf.pipeline.verify import run_verify
from cleannet_tf.training import cleannet as cleannet_training
from cleannet_tf.training import metrics


@pytest.fixture(scope="module")
def verified_workdir(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("verify")
    overrides, true, noisy = write_feature_dataset(tmp_path / "data", num_classes=6, heldout=(4, 5))
    config = small_train_config(overrides, **{"cleannet.mode": "stacked", "cleannet.calibration_fraction": 0.25,
                                              "refs.core_fraction": 0.7})
    workdir = str(tmp_path / "work")
    run_refs(config, workdir, progress=False)
    run_train(config, workdir, progress=False)
    report = run_verify(config, workdir)
    return config, workdir, report, true, noisy


def test_verify_writes_scores_metrics_and_verifier(verified_workdir):
    config, workdir, report, true, noisy = verified_workdir
    table = load_table(config, workdir)
    scores = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    pool = table.split != data_table.SPLIT_TEST
    assert len(scores) == int(pool.sum())
    rows = {key: i for i, key in enumerate(table.keys)}
    table_rows = np.array([rows[key] for key in scores.keys])
    assert list(scores.labels) == [table.class_names[c] for c in table.labels[table_rows]]
    # The default operating point: one threshold (each class's threshold is it; "calibrated":
    # test_pipeline_verify_operating_point.py).
    assert report["operating_point"] == "threshold" and set(report["class_thresholds"]) == {report["threshold"]}
    pair_threshold = np.asarray(report["class_thresholds"])[table.labels[table_rows]]
    np.testing.assert_array_equal(scores.noisy, scores.scores < pair_threshold)
    threshold = report["threshold"]
    # Soft weights: the calibrated P(label correct) (stacked mode), never 0 for an unsure image.
    np.testing.assert_allclose(scores.weight_soft, scores.p_correct, atol=2e-6)
    assert np.all(np.diff(scores.p_correct[np.argsort(scores.scores)]) >= -1e-6)  # monotone in the score
    # rank_score, the stacked logit, orders the images the same way and keeps apart those the score ties.
    assert np.all(np.diff(scores.scores[np.argsort(scores.rank_score, kind="stable")]) >= -1e-6)
    low = scores.scores <= scores.scores.min() + 1e-6
    assert len(np.unique(scores.rank_score[low])) == low.sum()
    np.testing.assert_array_equal(scores.weight_hard == 1, ~scores.noisy)
    # The saved verifier holds that calibration: its weight_soft output is scores.tsv's.
    assert report["calibration"] == "platt"
    model, _, _ = load_verifier(workdir)
    assert verifier.verification_head_of(model).calibration == tuple(report["calibration_ab"])
    data, _ = load_training_inputs(config, workdir, table)
    served = model({"features": data.features, "label": data.labels.astype(np.int64)})
    np.testing.assert_array_equal(table.keys[data.table_rows], scores.keys)
    np.testing.assert_allclose(served["weight_soft"], scores.weight_soft, atol=2e-6)
    np.testing.assert_allclose(served["score"], scores.scores, atol=2e-6)
    np.testing.assert_array_equal(served["is_noisy"], scores.noisy)  # the served verifier flags at the same point

    # The planted noise is found, in verified and held-out classes alike.
    key_index = {f"img{i:05d}.jpg": i for i in range(len(true))}
    planted = np.array([key_index[key] for key in scores.keys])
    wrong = true[planted] != noisy[planted]
    assert np.mean(scores.noisy == wrong) > 0.9
    # Suggested labels recover the true label of most flagged images.
    flagged = scores.noisy & wrong
    suggested = np.array([table.class_names.index(name) for name in scores.suggested_labels])
    assert np.mean(suggested[flagged] == true[planted][flagged]) > 0.8

    written = json.load(open(os.path.join(workdir, "verify", "metrics.json")))
    assert written["threshold"] == pytest.approx(threshold)
    assert written["operating_point"] == "threshold"  # metrics.json says which operating point flagged
    for field in ("detection_error", "detection_error_heldout", "roc_auc", "n_val", "precision", "recall", "f1"):
        assert field in written
    assert written["detection_error"] < 0.1 and written["detection_error_heldout"] < 0.15
    assert set(written["per_class"]) == set(table.class_names)
    assert len(written["calibration_classes"]) == 1  # 25% of the 4 verified classes
    for name in ("report.html", "to_verify.tsv", "scores_histogram.png", "roc_pr.png"):
        assert os.path.getsize(os.path.join(workdir, "verify", name)) > 0

    # metrics.json numbers equal a recomputation from scores.tsv and the validation rows.
    val = (table.split[table_rows] == data_table.SPLIT_VAL) & (table.verification[table_rows] >= 0)
    held = table.heldout_classes[table.labels[table_rows]]
    expected = metrics.detection_metrics(scores.scores[val & ~held], table.verification[table_rows][val & ~held],
                                         threshold)
    assert written["detection_error"] == pytest.approx(expected["error"], abs=1e-9)
    assert written["n_val"] == expected["n"]
    # Noise rates: the mean of 1 - P(label correct), verified rows counted as labelled, P with each verified
    # class's own intercept (held-out classes: offset 0); near the planted rate.
    verification = table.verification[table_rows]
    label_ids = table.labels[table_rows]
    offsets = np.array([written["per_class"][name]["calibration_offset"] for name in table.class_names])
    assert np.all(offsets[table.heldout_classes] == 0) and np.any(offsets[~table.heldout_classes] != 0)
    p = np.clip(scores.p_correct, 1e-12, 1 - 1e-12)  # scores.tsv has 6 decimals: some P are 0.000000
    logit = np.log(p) - np.log1p(-p)
    shifted = 1 / (1 + np.exp(-(logit + offsets[label_ids])))
    for c in np.nonzero(~table.heldout_classes)[0]:  # the offset makes the class's verified rows' mean P their share
        rows = (label_ids == c) & (verification >= 0)
        assert abs(shifted[rows].mean() - verification[rows].mean()) < 0.05
    wrong_expected = np.where(verification == 1, 0.0, np.where(verification == 0, 1.0, 1.0 - shifted))
    class0 = table.class_names[0]
    assert written["per_class"][class0]["noise_rate_estimate"] == pytest.approx(
        wrong_expected[scores.labels == class0].mean(), abs=1e-5)
    flagged_share = np.mean(scores.noisy[scores.labels == class0])
    assert written["per_class"][class0]["flagged_share"] == pytest.approx(flagged_share)
    assert written["noise_rate_estimate"] == pytest.approx(wrong_expected.mean(), abs=1e-5)
    assert abs(written["noise_rate_estimate"] - wrong.mean()) < 0.03
    assert written["calibration"] == "platt" and written["n_calibration"] > 0


def test_load_verifier_scores_like_scores_tsv(verified_workdir):
    config, workdir, report, _, _ = verified_workdir
    model, class_names, threshold = load_verifier(workdir)
    assert threshold == pytest.approx(report["threshold"])
    data, _ = load_training_inputs(config, workdir)
    scores = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    out = model({"features": data.features[:50], "label": data.labels[:50].astype(np.int64)})
    np.testing.assert_allclose(out["score"], scores.scores[:50], atol=1e-5)
    assert [class_names[c] for c in np.asarray(out["suggested_label"])] == list(scores.suggested_labels[:50])


def test_streamed_scores_equal_the_in_memory_scores(verified_workdir):
    """scores.tsv, scored batch by batch (own_label_scores), holds the entries of the (P, C) score matrix."""
    config, workdir, _, _, _ = verified_workdir
    model, class_names, _ = load_verifier(workdir)
    data, _ = load_training_inputs(config, workdir)
    all_scores = verifier.class_scores(model, data.features)  # (P, C) in memory
    logits = verifier.class_scores(model, data.features, logits=True)
    rows = np.arange(len(data.labels))
    own, best = all_scores[rows, data.labels], all_scores.argmax(axis=1)
    streamed = verifier.own_label_scores(model, data.features, data.labels)
    np.testing.assert_array_equal(streamed["score"], own)
    np.testing.assert_array_equal(streamed["suggested_label"], best)
    np.testing.assert_array_equal(streamed["suggested_score"], all_scores[rows, best])
    np.testing.assert_array_equal(streamed["rank_score"], logits[rows, data.labels])
    small = verifier.own_label_scores(model, data.features, data.labels, batch_size=37)  # batches of 37 rows
    np.testing.assert_allclose(small["score"], own, atol=1e-6)
    np.testing.assert_allclose(small["rank_score"], logits[rows, data.labels], atol=1e-5)

    written = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    table = load_table(config, workdir)
    assert list(written.keys) == list(table.keys[data.table_rows])
    np.testing.assert_array_equal(written.scores, np.array([float(f"{v:.6f}") for v in own], np.float32))
    np.testing.assert_array_equal(written.suggested_scores,
                                  np.array([float(f"{v:.6f}") for v in all_scores[rows, best]], np.float32))
    assert list(written.suggested_labels) == [class_names[c] for c in best]


def test_calibration_classes_are_kept_out_of_training(verified_workdir):
    config, workdir, report, _, _ = verified_workdir
    table = load_table(config, workdir)
    calibration = cleannet_training.calibration_classes(table, 0.25, config.seed)
    assert calibration.sum() == 1 and not (calibration & table.heldout_classes).any()
    trained_on, _ = load_training_inputs(config, workdir, for_training=True)
    assert not calibration[trained_on.labels[trained_on.verified_train]].any()
    assert [table.class_names[c] for c in np.nonzero(calibration)[0]] == report["calibration_classes"]


def test_calibration_classes_are_named_as_such_not_as_held_out(verified_workdir, caplog):
    config, workdir, report, _, _ = verified_workdir
    table = load_table(config, workdir)
    chosen = cleannet_training.calibration_classes(table, 0.25, config.seed)
    names = [table.class_names[c] for c in np.nonzero(chosen)[0]]
    written = json.load(open(os.path.join(workdir, "verify", "metrics.json")))
    assert written["calibration_classes"] == names and len(names) == 1
    assert written["per_class"][names[0]].get("calibration") and not written["per_class"][names[0]]["heldout"]
    assert [name for name, info in written["per_class"].items() if info["heldout"]] == ["class4", "class5"]
    html = open(os.path.join(workdir, "verify", "report.html")).read()
    assert "calibration classes (cleannet.calibration_fraction; verified, not held out)" in html
    assert f"1: {names[0]}" in html
    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)  # an earlier test may have quietened absl
    try:
        with caplog.at_level("INFO"):
            load_training_inputs(config, workdir, for_training=True)
    finally:
        absl_logging.set_verbosity(verbosity)
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipped")]
    assert skipped and all("calibration classes" in m and "held-out" not in m for m in skipped), skipped
    assert any(f"Calibration classes (cleannet.calibration_fraction=0.25, not held out): 1 of 6: {names[0]}"
               in r.getMessage() for r in caplog.records)


def test_verify_warns_when_too_few_verified_rows_choose_the_threshold(verified_workdir):
    config, workdir, report, _, _ = verified_workdir
    table = load_table(config, workdir)
    # The threshold rows: the calibration classes' verified_train rows (the score uses CleanNet's signals).
    calibration = cleannet_training.calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
    rows = (table.split == data_table.SPLIT_TRAIN) & (table.verification >= 0) & calibration[table.labels]
    wrong, right = int(np.sum(table.verification[rows] == 0)), int(np.sum(table.verification[rows] == 1))
    val = (table.split == data_table.SPLIT_VAL) & (table.verification >= 0) & ~table.heldout_classes[table.labels]
    assert (wrong, right) != (int(np.sum(table.verification[val] == 0)), int(np.sum(table.verification[val] == 1)))
    assert min(wrong, right) < sanity.MIN_VERIFIED_PER_KIND
    written = json.load(open(os.path.join(workdir, "verify", "metrics.json")))
    assert (written["n_threshold_right"], written["n_threshold_wrong"]) == (right, wrong)
    assert written["warnings"] == report["warnings"]
    assert len(written["warnings"]) == 1
    assert f"only {right} verified-right and {wrong} verified-wrong labels (verified_train of the calibration " \
        "classes" in written["warnings"][0]
    assert "Warning: cleannet-verify: only" in open(os.path.join(workdir, "verify", "report.html")).read()
    assert written["warnings"][0] in records.recorded_warnings(config, workdir)


def test_threshold_and_weights_come_from_verified_train_rows(verified_workdir):
    config, workdir, report, _, _ = verified_workdir
    written = json.load(open(os.path.join(workdir, "verify", "metrics.json")))
    table = load_table(config, workdir)
    data, reference_sets = load_training_inputs(config, workdir, table)
    calibration = cleannet_training.calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
    signals = list(config.verify.signals)
    uses_cleannet = bool(set(signals) & set(verifier.CLEANNET_SIGNALS))
    rows, name = fit.verified_rows(data, calibration, uses_cleannet)
    assert written["threshold_rows"] == written["fit_rows"] == name
    assert name.startswith("verified_train") and written["n_threshold_rows"] == len(rows)
    assert not np.isin(rows, data.validation).any()  # never the evaluated rows
    assert set(data.labels[rows]) <= set(np.nonzero(~data.heldout_classes)[0])
    scores = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv")).scores
    assert written["threshold"] == pytest.approx(metrics.best_threshold(scores[rows], data.verification[rows])[0],
                                                 abs=1e-5)
    assert "verified_val" in written["metric_rows"]["*_heldout"]
