"""ops.py: the one NumPy copy of log-normalise, class means, trimmed core and own-class margin."""

import numpy as np
import pytest

from cleannet_tf import ops
from cleannet_tf.model import layers


def test_signed_log1p_matches_the_keras_layer():
    x = np.array([[-3.0, -0.5, 0.0, 0.5, 20.0]], np.float32)
    np.testing.assert_allclose(ops.signed_log1p(x), np.asarray(layers.FeatureNormalization("log")(x)), rtol=1e-6)
    normalized = ops.log_normalize(x)
    assert normalized.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"features must be \(N, D\)"):
        ops.log_normalize(x[0])


def test_own_and_margin_against_a_loop_and_input_untouched():
    rng = np.random.default_rng(0)
    similarity = rng.normal(size=(7, 4)).astype(np.float32)
    labels = rng.integers(0, 4, 7)
    before = similarity.copy()
    own, margin = ops.own_and_margin(similarity, labels)
    np.testing.assert_array_equal(similarity, before)
    for i, y in enumerate(labels):
        assert own[i] == similarity[i, y]
        assert margin[i] == pytest.approx(similarity[i, y] - max(similarity[i, c] for c in range(4) if c != y))


def test_trimmed_core_drops_a_far_off_group_in_every_class():
    rng = np.random.default_rng(1)
    clean = [rng.normal(loc, 0.1, (20, 3)) for loc in ([5, 0, 0], [0, 5, 0])]
    far = [rng.normal([0, 0, 5], 0.1, (5, 3)) for _ in range(2)]
    x = ops.unit_rows(np.concatenate([clean[0], far[0], clean[1], far[1]]))
    labels = np.repeat([0, 1], 25)
    core = ops.trimmed_class_core(x, labels, num_classes=2, keep=0.8, iterations=2)
    expected = np.concatenate([np.ones(20, bool), np.zeros(5, bool)] * 2)
    np.testing.assert_array_equal(core, expected)
    assert ops.trimmed_class_core(x, labels, num_classes=2, keep=0.8, iterations=0).all()
    means = ops.class_means(x, labels, num_classes=3, weights=core)
    np.testing.assert_allclose(np.linalg.norm(means[:2], axis=1), 1.0, rtol=1e-6)
    assert not means[2].any()  # an empty class
