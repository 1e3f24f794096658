"""The verifier model and cleannet-verify: scores, thresholds, suggested labels, outputs on disk."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_train_config, write_feature_dataset
from sklearn.metrics import roc_auc_score

from cleannet_tf import sanity
from cleannet_tf.data import table as data_table
from cleannet_tf.detection import calibration as calibration_lib
from cleannet_tf.detection import fit, stacking, verifier
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model.cleannet import build_cleannet, encode_classes
from cleannet_tf.pipeline import records, scores_tsv
from cleannet_tf.pipeline.artifacts import load_training_inputs, load_verifier
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.train import run_train
from cleannet_tf.pipeline.verify import run_verify
from cleannet_tf.training import cleannet as cleannet_training
from cleannet_tf.training import metrics, pool


def _random_verifier(scoring, *, threshold=0.1, weights=(0.5, -1.0, 2.0, 1.5), bias=-0.3, seed=0):
    keras.utils.set_random_seed(seed)
    cleannet = build_cleannet(feature_dim=12, num_references=3, query_hidden_dim=8, reference_hidden_dim=8,
                              attention_dim=4, embed_dim=6)
    rng = np.random.default_rng(seed)
    references = rng.gamma(1.0, 1.0, (5, 3, 12)).astype(np.float32)
    class_embeddings = encode_classes(cleannet, references).numpy()
    means = detection_signals.log_normalize(rng.gamma(1.0, 1.0, (5, 12)))
    model = verifier.build_verifier(cleannet, class_embeddings, means, scoring=scoring, threshold=threshold,
                                    signal_weights=weights, signal_bias=bias)
    return model, cleannet, class_embeddings, means


def _numpy_class_scores(cleannet, class_embeddings, means, features, scoring, weights, bias):
    query = cleannet.get_layer("query_encoder")(features)["query_embedding"].numpy()
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    classes = class_embeddings / np.linalg.norm(class_embeddings, axis=1, keepdims=True)
    cosine = query @ classes.T
    mean_cosine = detection_signals.log_normalize(features) @ means.T

    def margin(s):
        out = np.empty_like(s)
        for c in range(s.shape[1]):
            out[:, c] = s[:, c] - np.delete(s, c, axis=1).max(axis=1)
        return out

    signals = [cosine, margin(cosine), mean_cosine, margin(mean_cosine)]
    if scoring == "cosine":
        return signals[0]
    if scoring == "margin":
        return signals[1]
    logit = bias + sum(w * s for w, s in zip(weights, signals, strict=True))
    return 2 / (1 + np.exp(-logit / verifier.STACKED_TEMPERATURE)) - 1


@pytest.mark.parametrize("scoring", verifier.SCORINGS)
def test_verifier_outputs_match_a_numpy_computation(scoring):
    model, cleannet, class_embeddings, means = _random_verifier(scoring)
    rng = np.random.default_rng(1)
    features = rng.gamma(1.0, 1.0, (7, 12)).astype(np.float32)
    labels = rng.integers(0, 5, 7)
    expected = _numpy_class_scores(cleannet, class_embeddings, means, features, scoring, (0.5, -1.0, 2.0, 1.5), -0.3)
    out = model({"features": features, "label": labels})
    np.testing.assert_allclose(out["score"], expected[np.arange(7), labels], atol=1e-5)
    np.testing.assert_array_equal(out["is_noisy"], expected[np.arange(7), labels] < 0.1)
    own = expected[np.arange(7), labels]
    soft = (own + 1) / 2 if scoring == "stacked" else np.clip(own, 0, 1)  # uncalibrated: P of the stacked score
    np.testing.assert_allclose(out["weight_soft"], soft, atol=1e-5)
    np.testing.assert_array_equal(out["suggested_label"], expected.argmax(axis=1))
    np.testing.assert_allclose(out["suggested_score"], expected.max(axis=1), atol=1e-5)
    assert out["suggested_label"].dtype == tf.int64 and out["is_noisy"].dtype == tf.bool
    np.testing.assert_allclose(verifier.class_scores(model, features), expected, atol=1e-5)


@pytest.mark.parametrize("scoring", ["stacked", "margin", "cosine"])
def test_weight_soft_is_the_calibrated_probability_and_survives_saving(scoring, tmp_path):
    keras.utils.set_random_seed(0)
    cleannet = build_cleannet(feature_dim=12, num_references=3, query_hidden_dim=8, reference_hidden_dim=8,
                              attention_dim=4, embed_dim=6)
    rng = np.random.default_rng(0)
    class_embeddings = encode_classes(cleannet, rng.gamma(1.0, 1.0, (5, 3, 12)).astype(np.float32)).numpy()
    means = detection_signals.log_normalize(rng.gamma(1.0, 1.0, (5, 12)))
    model = verifier.build_verifier(cleannet, class_embeddings, means, scoring=scoring, threshold=0.0,
                                    signal_weights=(3.0, -1.0, 8.0, 1.5), signal_bias=-0.3, calibration=(0.6, 0.4))
    features = rng.gamma(1.0, 1.0, (64, 12)).astype(np.float32)
    labels = rng.integers(0, 5, 64)
    path = str(tmp_path / "verifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert verifier.verification_head_of(loaded).calibration == (0.6, 0.4)
    out = loaded({"features": features, "label": labels})
    score = out["score"].numpy()
    p = calibration_lib.correct_probability(score, scoring=scoring, calibration=(0.6, 0.4))
    x = np.log((1 + score.astype(np.float64)) / (1 - score)) if scoring == "stacked" else score
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-(0.6 * x + 0.4))), rtol=1e-6)  # Platt of the logit / score
    head = verifier.verification_head_of(loaded)
    np.testing.assert_allclose(calibration_lib.correct_probabilities(score, scoring=head.scoring,
                                                                     calibration=head.calibration), p, rtol=1e-12)
    expected = np.clip(score, 0, 1) if scoring == "cosine" else p  # paper mode keeps max(0, cos)
    np.testing.assert_allclose(out["weight_soft"], expected, atol=1e-6)
    if scoring != "cosine":
        assert not np.allclose(out["weight_soft"], np.clip(score, 0, 1), atol=1e-3)


def test_verifier_keras_round_trip_and_bad_labels(tmp_path):
    model, *_ = _random_verifier("stacked")
    features = np.random.default_rng(2).gamma(1.0, 1.0, (4, 12)).astype(np.float32)
    labels = np.array([0, 4, 2, 1])
    path = str(tmp_path / "verifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    before, after = model({"features": features, "label": labels}), loaded({"features": features, "label": labels})
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    assert verifier.verification_head_of(loaded).threshold == pytest.approx(0.1)
    for bad in ([0, 5, 0, 0], [0, -1, 0, 0]):
        with pytest.raises(tf.errors.InvalidArgumentError, match="label must be a class id"):
            loaded({"features": features, "label": np.array(bad)})


def test_fitted_signal_weights_reproduce_the_logistic_regression():
    rng = np.random.default_rng(3)
    signals = rng.normal(size=(300, 4)) * [1, 5, 0.1, 2] + [0, 3, -1, 0]
    verification = (signals @ [1, 0.2, 8, -0.5] + rng.normal(0, 1, 300) > -8).astype(int)
    weights, bias = stacking.fit_signal_weights(signals, verification)
    detector = stacking.StackedDetector().fit(signals, verification)
    np.testing.assert_allclose(1 / (1 + np.exp(-(signals @ weights + bias))), detector.score(signals), atol=1e-9)


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
    threshold = report["threshold"]
    np.testing.assert_array_equal(scores.noisy, scores.scores < threshold - 1e-6 * (scores.scores == threshold))
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


def _neighbour_verifier(weights, bias, *, index_rows=40, seed=0):
    """A stacked verifier whose classifier and kNN index come from clustered data of 5 classes (D=12)."""
    keras.utils.set_random_seed(seed)
    cleannet = build_cleannet(feature_dim=12, num_references=3, query_hidden_dim=8, reference_hidden_dim=8,
                              attention_dim=4, embed_dim=6)
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, (5, 12)) * 3
    labels = np.repeat(np.arange(5), index_rows // 5)
    features = np.maximum(centres[labels] + rng.normal(0, 0.5, (len(labels), 12)), 0).astype(np.float32)
    x = detection_signals.log_normalize(features)
    classifier = detection_signals.linear_classifier(x, labels, num_classes=5)
    means = detection_signals.class_means(x, labels, num_classes=5)
    model = verifier.build_verifier(cleannet, np.ones((5, 6), np.float32), means, scoring="stacked", threshold=0.0,
                                    signal_weights=weights, signal_bias=bias, classifier=classifier,
                                    index=fit.knn_index(x, labels))
    return model, features, labels, x, classifier


def test_classifier_and_knn_signals_match_numpy_and_skip_the_query_itself():
    weights = (0, 0, 0, 0.7, 0.4, 1.1, 2.0)  # class_mean_margin, classifier_score, classifier_margin, knn_agreement
    model, features, labels, x, (w, b) = _neighbour_verifier(weights, -0.5)
    head = verifier.verification_head_of(model)
    new = np.maximum(features[:6] + np.random.default_rng(5).normal(0, 0.3, (6, 12)), 0).astype(np.float32)
    for queries, is_pool in ((features, True), (new, False)):
        q = detection_signals.log_normalize(queries)
        similarity = q @ x.T
        if is_pool:  # a pool image is not its own neighbour
            np.fill_diagonal(similarity, -2.0)
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :verifier.KNN_K]
        knn = np.stack([(labels[nearest] == c).mean(axis=1) for c in range(5)], axis=1)
        assert knn.max(axis=1).min() > 0.5  # clustered: most neighbours share a class
        got = head.signals(tf.constant(queries), tf.zeros((len(queries), 6)),
                           ("classifier_score", "classifier_margin", "knn_agreement", "class_mean_margin"))
        np.testing.assert_allclose(got["classifier_score"], q @ w + b, atol=1e-4)
        np.testing.assert_allclose(got["knn_agreement"], knn, atol=1e-6)
        score = q @ w + b
        margin = np.stack([score[:, c] - np.delete(score, c, axis=1).max(axis=1) for c in range(5)], axis=1)
        logit = -0.5 + 0.7 * got["class_mean_margin"].numpy() + 0.4 * score + 1.1 * margin + 2.0 * knn
        np.testing.assert_allclose(verifier.class_scores(model, queries, logits=True), logit, atol=1e-4)
        np.testing.assert_allclose(verifier.class_scores(model, queries), 2 / (1 + np.exp(-logit)) - 1, atol=1e-5)


def test_neighbour_verifier_round_trip_and_needs_an_index(tmp_path):
    model, features, labels, *_ = _neighbour_verifier((0, 0, 0, 1.0, 0, 1.0, 1.0), 0.2)
    path = str(tmp_path / "verifier.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    inputs = {"features": features[:9], "label": labels[:9].astype(np.int64)}
    np.testing.assert_array_equal(model(inputs)["score"], loaded(inputs)["score"])
    with pytest.raises(ValueError, match="kNN index"):
        verifier.VerificationHead(5, 6, 12, scoring="stacked", threshold=0.0, signal_weights=(0,) * 6 + (1.0,))


def test_saturated_scores_still_rank_by_their_logit():
    model, features, labels, *_ = _neighbour_verifier((0, 0, 0, 0, 0, 60.0, 0), 0.0)
    wrong = (labels + 1) % 5
    scores = verifier.class_scores(model, features)[np.arange(len(labels)), wrong]
    logits = verifier.class_scores(model, features, logits=True)[np.arange(len(labels)), wrong]
    assert np.sum(scores == -1.0) >= 10  # float32 2 sigmoid - 1 saturates: the scores tie
    assert len(np.unique(logits[scores == -1.0])) == int(np.sum(scores == -1.0))  # the logits do not


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


def test_classifier_rounds_refit_the_exported_classifier_and_it_serves_the_fitted_scores(tmp_path):
    # 5 classes (2 held out), 30% of labels flipped to the next class; a small untrained CleanNet (its signals
    # are not used).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(5), 80)
    centres = rng.normal(0, 1, (5, 12))
    features = (centres[true] + rng.normal(0, 1.0, (len(true), 12))).astype(np.float32)
    labels = true.copy()
    flip = rng.random(len(true)) < 0.3
    labels[flip] = (true[flip] + 1) % 5
    order = rng.permutation(len(true))
    heldout = np.array([False, False, False, True, True])
    verified_train = np.sort(order[:120][~heldout[labels[order[:120]]]])
    validation = np.sort(order[120:220])
    verification = np.full(len(true), -1, np.int8)
    verification[verified_train] = labels[verified_train] == true[verified_train]
    verification[validation] = labels[validation] == true[validation]
    names = tuple(f"c{c}" for c in range(5))
    data = pool.TrainingData(features, labels.astype(np.int32), verification, np.arange(len(true)), verified_train,
                             validation, heldout, names)
    cleannet = build_cleannet(feature_dim=12, num_references=3, query_hidden_dim=8, reference_hidden_dim=8,
                              attention_dim=4, embed_dim=6)
    reference_sets = ReferenceSets(rng.gamma(1.0, 1.0, (5, 3, 12)).astype(np.float32), np.full(5, 3, np.int32),
                                   names, np.full(5, 80))
    signals = ("classifier_score", "classifier_margin")
    first, first_info = fit.fit_verifier(cleannet, data, reference_sets, mode="stacked", signals=signals)
    model, info = fit.fit_verifier(cleannet, data, reference_sets, mode="stacked", signals=signals,
                                   classifier_rounds=1)
    assert (first_info["classifier_rounds"], info["classifier_rounds"]) == (0, 1)
    assert info["fit_rows"] == "verified_train of verified classes"
    own = np.arange(len(labels)), labels
    p_first = (verifier.class_scores(first, features)[own] + 1) / 2
    weights = detection_signals.classifier_refit_weights(p_first, verified_train, verification[verified_train])
    expected = detection_signals.linear_classifier(detection_signals.log_normalize(features), labels, num_classes=5,
                                           sample_weights=weights)
    head = verifier.verification_head_of(model)
    np.testing.assert_allclose(head.classifier_weights.numpy(), expected[0], atol=1e-4)
    np.testing.assert_allclose(head.classifier_bias.numpy(), expected[1], atol=1e-4)
    assert not np.allclose(head.classifier_weights.numpy(),
                           verifier.verification_head_of(first).classifier_weights.numpy(), atol=1e-3)
    path = str(tmp_path / "verifier.keras")
    model.save(path)
    served = keras.saving.load_model(path)({"features": features, "label": labels.astype(np.int64)})
    scores = verifier.class_scores(model, features)[own]
    np.testing.assert_allclose(served["score"], scores, atol=1e-6)
    np.testing.assert_array_equal(served["is_noisy"], scores < info["threshold"])
    wrong = labels != true
    assert roc_auc_score(~wrong, scores) > roc_auc_score(~wrong, p_first) - 0.01
