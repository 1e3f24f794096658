"""detection/operating_point.py: P(label wrong) > 1/2 with each class's own prior (EM), as per-class thresholds."""

import numpy as np
import pytest

from cleannet_tf import config as config_lib
from cleannet_tf.detection import label_noise, operating_point


def _logit(p):
    return np.log(p) - np.log1p(-p)


def _planted(noise_rate, n, rng):
    """Scores x of n pairs: right labels x ~ N(+1, 1), wrong ones x ~ N(-1, 1), so the likelihood ratio is
    exactly log p(x | right) / p(x | wrong) = 2 x. Returns (x (n,), wrong (n,) bool)."""
    wrong = rng.random(n) < noise_rate
    return np.where(wrong, -1.0, 1.0) + rng.standard_normal(n), wrong


def _posterior_correct(x, noise_rate):
    """The exact P(label correct | x) under a prior `noise_rate`: sigmoid(logit(1 - rate) + 2 x)."""
    return 1.0 / (1.0 + np.exp(-(_logit(1.0 - noise_rate) + 2.0 * x)))


def test_each_class_is_flagged_where_its_own_posterior_says_wrong():
    # Calibrated on rows with 30% wrong labels; class 0 has 5% wrong, class 1 has 60% wrong. The right rule in
    # class c is P_c(wrong | x) > 1/2, i.e. 2 x < -logit(1 - rate_c): x < -1.47 in class 0, x < 0.20 in class 1.
    rng = np.random.default_rng(0)
    x0, wrong0 = _planted(0.05, 20_000, rng)
    x1, wrong1 = _planted(0.60, 20_000, rng)
    x, wrong = np.concatenate([x0, x1]), np.concatenate([wrong0, wrong1])
    labels = np.repeat([0, 1], 20_000)
    calibrated = _posterior_correct(x, 0.30)  # what a calibration on the 30% rows gives every class
    offsets, rates = operating_point.prior_offsets(calibrated, labels, num_classes=3, calibration_noise_rate=0.30)
    np.testing.assert_allclose(rates[:2], [wrong0.mean(), wrong1.mean()], atol=0.01)
    assert np.isnan(rates[2]) and offsets[2] == 0.0  # no pair: no estimate, no shift
    thresholds = operating_point.class_thresholds(offsets, scoring="stacked")
    scores = 2.0 * calibrated - 1.0  # the stacked score of P (no Platt calibration)
    right_cut = 2.0 * _posterior_correct(-_logit(1.0 - np.array([0.05, 0.60])) / 2.0, 0.30) - 1.0
    np.testing.assert_allclose(thresholds[:2], right_cut, atol=0.03)
    flagged = label_noise.find_label_issues(scores, threshold=thresholds[labels])
    error = lambda mask, cut: np.mean(cut[mask] != wrong[mask])  # noqa: E731
    single = scores < 0.0  # P(wrong) > 1/2 under the calibration rows' prior, the same in every class
    for c in (0, 1):
        assert error(labels == c, flagged) < error(labels == c, single) - 0.005
    # sample_weights "hard" is find_label_issues' complement at the same per-pair thresholds.
    hard = label_noise.sample_weights(scores, mode="hard", threshold=thresholds[labels])
    np.testing.assert_array_equal(hard == 0, flagged)


def test_a_class_with_the_calibration_prior_is_not_moved():
    rng = np.random.default_rng(1)
    x, _ = _planted(0.2, 40_000, rng)
    offsets, rates = operating_point.prior_offsets(_posterior_correct(x, 0.2), np.zeros(len(x), int), num_classes=1,
                                                   calibration_noise_rate=0.2)
    assert rates[0] == pytest.approx(0.2, abs=0.01) and abs(offsets[0]) < 0.1


def test_verified_pairs_are_left_out_of_the_estimate():
    rng = np.random.default_rng(2)
    x, _ = _planted(0.1, 5_000, rng)
    p = _posterior_correct(x, 0.1)
    labels = np.zeros(len(x), int)
    _, plain = operating_point.prior_offsets(p, labels, num_classes=1, calibration_noise_rate=0.1)
    verification = np.full(len(x), -1)
    extra = np.full(2_000, 1e-6)  # verified pairs that look wrong: not counted
    _, with_verified = operating_point.prior_offsets(
        np.concatenate([p, extra]), np.zeros(len(x) + len(extra), int), num_classes=1, calibration_noise_rate=0.1,
        verification=np.concatenate([verification, np.zeros(len(extra), int)]))
    assert with_verified[0] == pytest.approx(plain[0])


def test_class_thresholds_of_a_platt_calibrated_score():
    # cosine / margin: P = sigmoid(a s + b + d_c) = 1/2 at s = -(b + d_c) / a.
    thresholds = operating_point.class_thresholds([0.0, 1.0], scoring="margin", calibration=(4.0, -2.0))
    np.testing.assert_allclose(thresholds, [0.5, 0.25])
    with pytest.raises(ValueError, match="needs a calibration"):
        operating_point.class_thresholds([0.0], scoring="cosine")
    with pytest.raises(ValueError, match="calibration_noise_rate"):
        operating_point.prior_offsets([0.5], [0], num_classes=1, calibration_noise_rate=0.0)


def test_per_pair_thresholds_must_match_the_scores():
    with pytest.raises(ValueError, match=r"threshold must be a float or \(N,\)"):
        label_noise.find_label_issues(np.zeros(3), threshold=np.zeros(2))
    with pytest.raises(ValueError, match=r"threshold must be a float or \(N,\)"):
        label_noise.sample_weights(np.zeros(3), mode="hard", threshold=np.zeros(4))


def test_config_field_operating_point_is_validated():
    config = config_lib.default_config()
    assert config.verify.operating_point == "threshold"
    config.verify.operating_point = "median"
    with pytest.raises(ValueError, match="verify.operating_point"):
        config_lib.validate(config, needs_data=False)
