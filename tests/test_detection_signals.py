"""Post-hoc detectors on planted clusters with known label noise (real computations, small data)."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.detection import stacking


def planted(num_classes=8, per_class=60, dim=16, noise_rate=0.3, spread=0.6, seed=0):
    """Non-negative clustered features; a `noise_rate` share of labels flipped to a random other class.

    Returns (features (N, D), noisy labels (N,), true labels (N,), centres (C, D)).
    """
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(num_classes), per_class)
    centres = rng.gamma(1.0, 1.0, (num_classes, dim)) * 3
    features = np.maximum(centres[true] + rng.normal(0, spread, (len(true), dim)), 0).astype(np.float32)
    noisy = true.copy()
    flip = rng.permutation(len(true))[: int(round(noise_rate * len(true)))]
    noisy[flip] = (true[flip] + rng.integers(1, num_classes, len(flip))) % num_classes
    return features, noisy, true, centres


def test_log_normalize_unit_rows_and_sign():
    x = detection_signals.log_normalize(np.array([[np.e - 1, 0.0], [0.0, 0.0], [-(np.e - 1), np.e - 1]]))
    np.testing.assert_allclose(x[0], [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(x[1], [0.0, 0.0])  # zero rows stay finite
    np.testing.assert_allclose(x[2], [-np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)


def test_robust_means_ignore_noise_better_than_plain_means():
    features, noisy, true, _ = planted(noise_rate=0.3)
    x = detection_signals.log_normalize(features)
    clean = detection_signals.class_means(x, true, num_classes=8)  # means of the true classes: the target
    plain = detection_signals.class_means(x, noisy, num_classes=8)
    robust = detection_signals.robust_class_means(x, noisy, num_classes=8, keep=0.6)
    plain_gap = 1 - np.einsum("cd,cd->c", plain, clean)
    robust_gap = 1 - np.einsum("cd,cd->c", robust, clean)
    assert robust_gap.mean() < 0.5 * plain_gap.mean()
    np.testing.assert_allclose(np.linalg.norm(robust, axis=1), 1.0, atol=1e-5)
    members = detection_signals.robust_class_members(x, noisy, num_classes=8, keep=0.6)
    assert np.mean(noisy[members] == true[members]) > 0.95 > np.mean(noisy == true)  # the kept rows are clean
    assert abs(members.mean() - 0.6) < 0.02
    # keep=1 (or no iteration) is the plain mean.
    means = detection_signals.robust_class_means(x, noisy, num_classes=8, keep=1.0)
    np.testing.assert_allclose(means, plain, atol=1e-6)


def test_own_class_margin_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    vectors = rng.normal(size=(5, 6)).astype(np.float32)
    labels = rng.integers(0, 5, 50)
    own, margin = detection_signals.own_class_margin(x, labels, vectors, batch_size=7)
    sims = x @ vectors.T
    np.testing.assert_allclose(own, sims[np.arange(50), labels], rtol=1e-5)
    others = np.where(np.eye(5, dtype=bool)[labels], -np.inf, sims)
    np.testing.assert_allclose(margin, own - others.max(axis=1), rtol=1e-5, atol=1e-6)


def test_knn_label_agreement_matches_brute_force_and_excludes_self():
    rng = np.random.default_rng(2)
    x = detection_signals.log_normalize(rng.gamma(1.0, 1.0, (40, 5)))
    labels = rng.integers(0, 3, 40)
    got = detection_signals.knn_label_agreement(x, labels, k=4, batch_size=9)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :4]
    np.testing.assert_allclose(got, (labels[nearest] == labels[:, None]).mean(axis=1))
    # Two tight pairs far apart, labels disagreeing within one pair: self must not count.
    pair_x = detection_signals.log_normalize(np.array([[9.0, 0.0], [9.0, 0.01], [0.0, 9.0], [0.01, 9.0]]))
    np.testing.assert_allclose(detection_signals.knn_label_agreement(pair_x, np.array([0, 0, 1, 2]), k=1), [1, 1, 0, 0])
    with pytest.raises(ValueError, match="k must be"):
        detection_signals.knn_label_agreement(pair_x, np.array([0, 0, 1, 2]), k=4)


def test_per_class_standardize_removes_class_offsets():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 101)
    base = rng.normal(size=202)
    shifted = base + np.where(labels == 1, 5.0, 0.0)  # class 1 scores all 5 higher
    a = detection_signals.per_class_standardize(base, labels, num_classes=2)
    b = detection_signals.per_class_standardize(shifted, labels, num_classes=2)
    np.testing.assert_allclose(a, b, atol=1e-9)
    for c in (0, 1):
        assert np.median(b[labels == c]) == pytest.approx(0.0, abs=1e-9)


def test_signals_separate_wrong_labels():
    features, noisy, true, _ = planted()
    signals, names = detection_signals.detection_signals(features, noisy, num_classes=8, knn_k=(5, 15))
    assert signals.shape == (len(noisy), len(names)) and "robust_margin" in names and "knn_agreement_15" in names
    correct = noisy == true
    for j, name in enumerate(names):
        assert roc_auc_score(correct, signals[:, j]) > 0.9, name


def test_stacked_detector_transfers_to_unverified_classes():
    # Verification labels for classes 0-3 only; the detector must rank wrong labels in classes 4-7 too.
    features, noisy, true, _ = planted(seed=4)
    signals, names = detection_signals.detection_signals(features, noisy, num_classes=8, knn_k=(5, 15))
    correct = (noisy == true).astype(int)
    rng = np.random.default_rng(5)
    verified = np.nonzero((noisy < 4) & (rng.random(len(noisy)) < 0.5))[0]
    for model in stacking.MODELS:
        detector = stacking.StackedDetector(model=model).fit(signals[verified], correct[verified])
        scores = detector.score(signals)
        assert scores.shape == (len(noisy),) and np.all((scores >= 0) & (scores <= 1))
        unverified_classes = noisy >= 4
        assert roc_auc_score(correct[unverified_classes], scores[unverified_classes]) > 0.95, model
        # At the threshold of 0.5 most held-out-class labels are classified right.
        assert np.mean((scores[unverified_classes] >= 0.5) == correct[unverified_classes]) > 0.9, model
    weights = stacking.StackedDetector().fit(signals[verified], correct[verified]).coefficients(names)
    assert set(weights) == set(names) and sum(weights.values()) > 0  # higher signals mean "label correct"


def test_stacked_detector_errors():
    with pytest.raises(ValueError, match="model must be"):
        stacking.StackedDetector(model="svm")
    with pytest.raises(ValueError, match="before fit"):
        stacking.StackedDetector().score(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="both values"):
        stacking.StackedDetector().fit(np.zeros((4, 2)), np.ones(4))
    with pytest.raises(ValueError, match="labels must be"):
        detection_signals.detection_signals(np.ones((3, 2)), np.array([0, 1, 5]), num_classes=2, knn_k=(1,))


def test_linear_classifier_is_ridge_and_its_margin_finds_wrong_labels():
    features, noisy, true, _ = planted(noise_rate=0.3)
    x = detection_signals.log_normalize(features)
    weights, bias = detection_signals.linear_classifier(x, noisy, num_classes=8, l2=1.0)
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
    targets = 2.0 * np.eye(8)[noisy] - 1.0
    expected = np.linalg.solve(xb.T @ xb + np.eye(xb.shape[1]), xb.T @ targets)
    np.testing.assert_allclose(weights, expected[:-1], atol=1e-4)
    np.testing.assert_allclose(bias, expected[-1], atol=1e-4)
    scores = x @ weights + bias
    rows = np.arange(len(noisy))
    others = scores.copy()
    others[rows, noisy] = -np.inf
    margin = scores[rows, noisy] - others.max(axis=1)
    assert roc_auc_score(noisy == true, margin) > 0.95
    with pytest.raises(ValueError, match="labels"):
        detection_signals.linear_classifier(x, np.full(len(x), 9), num_classes=8)


def test_refit_weighted_by_p_correct_lowers_error_on_planted_pair_flips():
    # 40% of the labels flipped to the next class: the first ridge fit is pulled towards the flips.
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(6), 80)
    centres = rng.normal(0, 1, (6, 32))
    features = centres[true] + rng.normal(0, 1.0, (len(true), 32))
    noisy = true.copy()
    flip = rng.random(len(true)) < 0.4
    noisy[flip] = (true[flip] + 1) % 6
    x = (features / np.linalg.norm(features, axis=1, keepdims=True)).astype(np.float32)
    verified = rng.choice(len(true), 60, replace=False)
    verification = (noisy == true)[verified].astype(int)
    rows = np.arange(len(noisy))

    def p_correct(sample_weights):
        weights, bias = detection_signals.linear_classifier(x, noisy, num_classes=6, sample_weights=sample_weights)
        scores = x @ weights + bias
        others = scores.copy()
        others[rows, noisy] = -np.inf
        signals = np.stack([scores[rows, noisy], scores[rows, noisy] - others.max(axis=1)], axis=1)
        return stacking.StackedDetector().fit(signals[verified], verification).score(signals)

    first = p_correct(None)
    weights = detection_signals.classifier_refit_weights(first, verified, verification)
    np.testing.assert_array_equal(weights[verified], verification)
    others = np.setdiff1d(rows, verified)
    np.testing.assert_allclose(weights[others], first[others])
    refit = p_correct(weights)
    wrong = noisy != true
    first_error, refit_error = np.mean((first < 0.5) != wrong), np.mean((refit < 0.5) != wrong)
    assert refit_error < first_error - 0.05, (first_error, refit_error)
    assert roc_auc_score(~wrong, refit) > roc_auc_score(~wrong, first)
    # The weighted fit is the weighted closed form; a row of weight 0 is left out.
    got_w, got_b = detection_signals.linear_classifier(x, noisy, num_classes=6, sample_weights=weights)
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
    targets = 2.0 * np.eye(6)[noisy] - 1.0
    expected = np.linalg.solve((xb * weights[:, None]).T @ xb + np.eye(33), (xb * weights[:, None]).T @ targets)
    np.testing.assert_allclose(got_w, expected[:-1], atol=1e-4)
    np.testing.assert_allclose(got_b, expected[-1], atol=1e-4)
    kept = weights > 0
    assert not kept.all()
    kept_w, _ = detection_signals.linear_classifier(x[kept], noisy[kept], num_classes=6, sample_weights=weights[kept])
    np.testing.assert_allclose(kept_w, got_w, atol=1e-4)
    with pytest.raises(ValueError, match="sample_weights"):
        detection_signals.linear_classifier(x, noisy, num_classes=6, sample_weights=-weights)
    with pytest.raises(ValueError, match="sample_weights"):
        detection_signals.linear_classifier(x, noisy, num_classes=6, sample_weights=weights[:5])


def test_blocked_normalisation_and_means_equal_one_pass_over_all_rows():
    """More rows than ops.BLOCK_ROWS: the block loops give the values of one pass, bit for bit."""
    from cleannet_tf import ops

    rng = np.random.default_rng(3)
    n = ops.BLOCK_ROWS + 3001
    features = rng.gamma(1.0, 1.0, (n, 6)).astype(np.float32)
    labels = rng.integers(5, size=n)
    one_pass = ops.unit_rows(ops.signed_log1p(features))
    np.testing.assert_array_equal(ops.log_normalize(features, block_rows=1000), one_pass)
    view = ops.LogNormalizedRows(features)
    assert len(view) == n and view.shape == (n, 6)
    np.testing.assert_array_equal(view[100:2100], one_pass[100:2100])
    np.testing.assert_array_equal(view[np.array([n - 1, 0, 7])], one_pass[[n - 1, 0, 7]])

    weights = (rng.random(n) < 0.7).astype(np.float32)
    sums = np.zeros((5, 6))
    np.add.at(sums, labels, one_pass * weights[:, None])
    expected = (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_array_equal(ops.class_means(one_pass, labels, num_classes=5, weights=weights), expected)
    np.testing.assert_array_equal(ops.class_means(view, labels, num_classes=5, weights=weights), expected)

    members = np.ones(n, bool)  # trimmed_class_core in one pass over all rows
    for _ in range(2):
        means = ops.class_means(one_pass, labels, num_classes=5, weights=members)
        members = ops._per_class_top(np.einsum("nd,nd->n", one_pass, means[labels]), labels, 5, 0.7)
    np.testing.assert_array_equal(ops.trimmed_class_core(view, labels, num_classes=5, keep=0.7, iterations=2),
                                  members)
