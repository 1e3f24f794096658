"""Detection metrics against hand-computed values."""

import numpy as np
import pytest

from cleannet_tf.training import metrics


def test_best_threshold_separable():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7])
    verification = np.array([1, 1, 0, 0, 1])
    threshold, error = metrics.best_threshold(scores, verification)
    assert error == 0.0 and threshold == pytest.approx(0.45)  # middle of the gap 0.2 .. 0.7


def test_best_threshold_with_overlap():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    verification = np.array([0, 1, 0, 1, 1, 1])
    threshold, error = metrics.best_threshold(scores, verification)
    # Cutting above 0.3 misclassifies one pair (0.2); any other cut at least as many.
    assert error == pytest.approx(1 / 6)
    predicted_correct = scores >= threshold
    assert np.mean(predicted_correct != verification.astype(bool)) == pytest.approx(error)


def test_detection_metrics_hand_computed():
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2])
    verification = np.array([0, 0, 1, 1, 1])
    result = metrics.detection_metrics(scores, verification, threshold=0.3)
    # predicted noisy: 0.1, 0.2 -> tp 1 (0.1), fp 1 (0.2); noisy 0.4 missed.
    assert result["error"] == pytest.approx(2 / 5)
    assert result["precision"] == pytest.approx(0.5) and result["recall"] == pytest.approx(0.5)
    assert result["f1"] == pytest.approx(0.5)
    # AUC: pairs (correct, wrong) ranked right: (0.35>0.1),(0.8>0.1),(0.8>0.4),(0.2>0.1) = 4 of 6
    assert result["roc_auc"] == pytest.approx(4 / 6)


def test_per_class_error():
    scores = np.array([0.9, 0.1, 0.9, 0.9])
    verification = np.array([1, 1, 0, 1])
    labels = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(metrics.per_class_error(scores, verification, labels, 0.5, 3), [0.5, 0.5, np.nan])


def test_bad_input():
    with pytest.raises(ValueError, match="verification labels must be 0 or 1"):
        metrics.best_threshold([0.1], [-1])
    with pytest.raises(ValueError, match="must both be"):
        metrics.detection_metrics([0.1, 0.2], [1], 0.5)
