"""CleanNet model: paper dimensions, .keras round trip, per-class == per-sample encoding."""

import keras
import numpy as np
import pytest

import cleannet_tf  # noqa: F401  (registers the custom layers for load_model)
from cleannet_tf.model import layers
from cleannet_tf.model.cleannet import (
    build_cleannet,
    encode_classes,
    query_encoder_of,
    reference_encoder_of,
    score_with_class_embeddings,
    similarity_to_all_classes,
)


def _inputs(batch=5, num_references=4, feature_dim=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"query_features": rng.gamma(1.0, 1.0, (batch, feature_dim)).astype(np.float32),
            "reference_features": rng.gamma(1.0, 1.0, (batch, num_references, feature_dim)).astype(np.float32)}


def test_paper_dimensions_and_parameter_count():
    model = build_cleannet(2048, 32)
    assert model.count_params() == 2_396_160
    assert query_encoder_of(model).count_params() == 1_116_800
    assert reference_encoder_of(model).count_params() == 1_279_360
    assert sorted(model.input) == ["query_features", "reference_features"]
    assert sorted(model.output_names) == ["class_embedding", "normalized_features", "query_embedding",
                                          "reconstruction", "score"]
    outputs = model(_inputs(3, 32, 2048))
    assert outputs["score"].shape == (3,) and outputs["query_embedding"].shape == (3, 128)
    assert outputs["class_embedding"].shape == (3, 128) and outputs["reconstruction"].shape == (3, 2048)
    # Weight decay on every kernel only (8 Dense layers), as TF1 l2_regularizer(1e-4): 5e-5 * sum(w^2).
    assert len(model.losses) == 8
    kernel = model.get_layer("query_encoder").get_layer("encoder_hidden").kernel
    assert float(kernel.regularizer.l2) == pytest.approx(5e-5)


def test_score_is_cosine_of_embeddings():
    outputs = build_cleannet(16, 4)(_inputs())
    q, c = np.asarray(outputs["query_embedding"]), np.asarray(outputs["class_embedding"])
    expected = np.sum(q * c, -1) / np.linalg.norm(q, axis=-1) / np.linalg.norm(c, axis=-1)
    np.testing.assert_allclose(outputs["score"], expected, atol=1e-6)
    np.testing.assert_allclose(outputs["normalized_features"], np.log1p(_inputs()["query_features"]), atol=1e-6)


def test_keras_round_trip_gives_identical_scores(tmp_path):
    model = build_cleannet(16, 4, dropout_rate=0.2, feature_norm="log")
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for name, value in model(_inputs()).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(loaded(_inputs())[name]), err_msg=name)


def test_per_class_encoding_equals_per_sample_with_dropout_off():
    model = build_cleannet(16, 4, dropout_rate=0.3)
    rng = np.random.default_rng(1)
    references = rng.gamma(1.0, 1.0, (6, 4, 16)).astype(np.float32)
    labels = np.array([3, 0, 3, 5, 5, 1, 3])
    queries = rng.gamma(1.0, 1.0, (7, 16)).astype(np.float32)
    per_sample = model({"query_features": queries, "reference_features": references[labels]}, training=False)
    class_table = encode_classes(model, references, batch_size=4)
    assert class_table.shape == (6, 128)
    scores, _ = score_with_class_embeddings(model, queries, labels, class_table)
    np.testing.assert_allclose(scores, per_sample["score"], atol=1e-6)
    all_classes = similarity_to_all_classes(per_sample["query_embedding"], class_table)
    np.testing.assert_allclose(np.asarray(all_classes)[np.arange(7), labels], per_sample["score"], atol=1e-6)


def test_dropout_only_in_training():
    model = build_cleannet(16, 4, dropout_rate=0.5)
    inputs = _inputs()
    np.testing.assert_array_equal(model(inputs, training=False)["score"], model(inputs, training=False)["score"])
    assert not np.allclose(model(inputs, training=True)["score"], model(inputs, training=False)["score"])


def test_attention_sums_to_one_and_pools_values():
    pooling = layers.ContextAttentionPooling(return_attention=True)
    keys = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    values = np.random.default_rng(1).normal(size=(2, 5, 7)).astype(np.float32)
    pooled, attention = pooling(keys, values)
    np.testing.assert_allclose(np.sum(attention, axis=-1), 1.0, atol=1e-6)
    context = np.asarray(pooling.context)
    expected_attention = np.exp(keys @ context) / np.exp(keys @ context).sum(-1, keepdims=True)
    np.testing.assert_allclose(attention, expected_attention, atol=1e-6)
    np.testing.assert_allclose(pooled, np.einsum("bk,bkh->bh", expected_attention, values), atol=1e-5)


@pytest.mark.parametrize("mode, expected", [("log", lambda x: np.sign(x) * np.log1p(np.abs(x))),
                                            ("l2", lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)),
                                            ("none", lambda x: x)])
def test_feature_normalization(mode, expected):
    x = np.array([[0.0, 1.0, 3.0, -2.0]], np.float32)
    np.testing.assert_allclose(layers.FeatureNormalization(mode)(x), expected(x), atol=1e-6)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="feature_dim must be a positive int. Received: feature_dim=0"):
        build_cleannet(0)
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        build_cleannet(16, dropout_rate=1.0)
    with pytest.raises(ValueError, match="Received: mode='log1p'"):
        layers.FeatureNormalization("log1p")
