"""CleanNet losses against hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from cleannet_tf.model import losses


def test_verification_loss_hand_computed():
    score = np.array([0.9, 0.3, 0.05, 0.6], np.float32)
    label = np.array([1, 0, 0, 1], np.float32)
    # l=1: 1 - s; l=0: 5 * max(0, s - 0.1)
    np.testing.assert_allclose(losses.verification_loss(score, label), [0.1, 1.0, 0.0, 0.4], atol=1e-6)
    np.testing.assert_allclose(losses.verification_loss(score, label, negative_weight=2.0, margin=0.2),
                               [0.1, 0.2, 0.0, 0.4], atol=1e-6)


def test_reconstruction_loss_is_a_sum_over_features():
    target = np.array([[1.0, 2.0, 3.0]], np.float32)
    reconstruction = np.array([[0.0, 2.0, 1.0]], np.float32)
    np.testing.assert_allclose(losses.reconstruction_loss(target, reconstruction), [5.0])


def test_unverified_loss_pseudo_label_and_no_gradient_through_it():
    score = tf.Variable([0.5, 0.05, 0.1])
    with tf.GradientTape() as tape:
        loss = losses.unverified_loss(score)
    np.testing.assert_allclose(loss, [0.5, 0.0, 0.9], atol=1e-6)  # 1[s >= 0.1] (1 - s)
    np.testing.assert_allclose(tape.gradient(loss, score), [-1.0, 0.0, -1.0])


def test_per_sample_total_hand_computed():
    score = np.array([0.8, 0.4, 0.2], np.float32)
    features = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
    reconstruction = np.array([[0.0, 0.0], [0.5, 0.0], [1.0, 1.0]], np.float32)
    verification = np.array([1, 0, 0], np.float32)
    is_verified = np.array([1, 1, 0], np.float32)
    total = losses.per_sample_loss(score, features, reconstruction, verification, is_verified)
    expected = [0.2 + 0.1 * 1.0,  # verified positive: 1 - s, + beta * rec
                5 * 0.3 + 0.1 * 0.25,  # verified negative: 5 (s - 0.1)
                0.1 * (1 - 0.2)]  # unverified, s >= 0.1: gamma (1 - s)
    np.testing.assert_allclose(total, expected, atol=1e-6)


def test_loss_weights_from_config():
    from cleannet_tf.config import default_config

    weights = losses.LossWeights.from_config(default_config().loss)
    assert weights == losses.LossWeights()
    with pytest.raises(TypeError):
        losses.LossWeights(bogus=1.0)


def test_other_class_loss_hand_computed():
    negative_score = np.array([0.5, 0.1, -0.3, 0.12], np.float32)
    np.testing.assert_allclose(losses.other_class_loss(negative_score, margin=0.1), [0.4, 0.0, 0.0, 0.02],
                               atol=1e-6)
