"""The verifier model (cleannet_tf/detection/verifier.py): its scores against numpy, calibration, saving, the
classifier and kNN signals."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from cleannet_tf.detection import calibration as calibration_lib
from cleannet_tf.detection import fit, stacking, verifier
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.model.cleannet import build_cleannet, encode_classes


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
