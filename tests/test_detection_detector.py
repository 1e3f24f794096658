"""cleannet_tf.CleanNetDetector: fit on arrays, audit new data, save and load."""

import numpy as np
import pytest
from conftest import small_train_config

import cleannet_tf
from cleannet_tf.detection import calibration as calibration_lib
from cleannet_tf.detection import verifier


def _planted(seed, n_per_class=120, num_classes=6, dim=24, noise=0.2):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).gamma(1.0, 1.0, (num_classes, dim)) * 3
    true = np.repeat(np.arange(num_classes), n_per_class)
    features = np.maximum(centres[true] + rng.normal(0, 0.8, (len(true), dim)), 0).astype(np.float32)
    noisy = true.copy()
    flipped = rng.random(len(true)) < noise
    noisy[flipped] = (true[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    return features, noisy, true


@pytest.fixture(scope="module")
def fitted():
    features, noisy, true = _planted(1)
    rng = np.random.default_rng(2)
    verification = np.where((rng.random(len(noisy)) < 0.5) & (noisy < 4), (noisy == true).astype(int), -1)
    # A caller's config is used as given: these are the settings detector_config would choose for 400 steps.
    config = small_train_config({"data.format": "tsv", "data.root": "unused.tsv"}, **{
        "train.steps": 400, "train.lr_decay_steps": 200, "refs.core_fraction": 0.7,
        "cleannet.calibration_fraction": 0.3})
    detector = cleannet_tf.CleanNetDetector(mode="stacked", steps=400, num_references=8, config=config)
    return detector.fit(features, noisy, verification), features, noisy, true


def test_detector_finds_planted_noise_on_new_data_including_unverified_classes(fitted):
    detector, *_ = fitted
    features, noisy, true = _planted(5)
    flagged = detector.find_label_issues(features, noisy)
    wrong = noisy != true
    assert np.mean(flagged == wrong) > 0.9
    unverified_classes = noisy >= 4
    assert np.mean(flagged[unverified_classes] == wrong[unverified_classes]) > 0.85
    ranked = detector.find_label_issues(features, noisy, return_ranked=True)
    scores = detector.score(features, noisy)
    np.testing.assert_array_equal(np.sort(ranked), np.nonzero(flagged)[0])
    assert np.all(np.diff(scores[ranked]) >= 0)
    suggested, _ = detector.suggest_labels(features)
    assert np.mean(suggested[flagged & wrong] == true[flagged & wrong]) > 0.8


def test_detector_weights_and_save_load(fitted, tmp_path):
    detector, features, noisy, _ = fitted
    scores = detector.score(features, noisy)
    # stacked: soft weight = the verifier's calibrated P(label correct) (Platt on its logit), not max(0, s)
    assert detector.config.cleannet.mode == "stacked"
    calibration = verifier.verification_head_of(detector.verifier_).calibration
    assert calibration == tuple(detector.info_["calibration_ab"])
    soft = detector.sample_weights(features, noisy, mode="soft")
    np.testing.assert_allclose(soft, calibration_lib.correct_probability(scores, scoring="stacked",
                                                                     calibration=calibration), atol=1e-6)
    np.testing.assert_allclose(soft, detector.verifier_({"features": features, "label": noisy})["weight_soft"],
                               atol=1e-6)
    hard = detector.sample_weights(features, noisy, mode="hard")
    # hard: the verifier's operating point (each class's threshold), the complement of find_label_issues
    thresholds = np.asarray(detector.info_["class_thresholds"])[noisy]
    np.testing.assert_array_equal(hard, (scores >= thresholds).astype(np.float32))
    np.testing.assert_array_equal(detector.find_label_issues(features, noisy), hard == 0)
    path = str(tmp_path / "detector.keras")
    detector.save(path)
    loaded = cleannet_tf.CleanNetDetector.load(path)
    np.testing.assert_array_equal(loaded.score(features, noisy), scores)
    np.testing.assert_array_equal(loaded.sample_weights(features, noisy, mode="soft"), soft)
    assert loaded.threshold_ == pytest.approx(detector.threshold_)
    np.testing.assert_array_equal(loaded.sample_weights(features, noisy, mode="hard"), hard)
    assert loaded.config.cleannet.mode == "stacked" and loaded.validation_fraction == detector.validation_fraction


def test_detector_rejects_bad_input():
    features, noisy, _ = _planted(3, n_per_class=20)
    detector = cleannet_tf.CleanNetDetector(steps=10)
    with pytest.raises(ValueError, match="verification must hold"):
        detector.fit(features, noisy, np.full(len(noisy), 2))
    with pytest.raises(ValueError, match="Need verified rows"):
        detector.fit(features, noisy, np.full(len(noisy), -1))
    with pytest.raises(ValueError, match="not fitted"):
        detector.score(features, noisy)


def test_detector_on_the_class_mean_margin_alone():
    features, noisy, true = _planted(1)
    rng = np.random.default_rng(2)
    verification = np.where((rng.random(len(noisy)) < 0.5) & (noisy < 4), (noisy == true).astype(int), -1)
    config = small_train_config({"data.format": "tsv", "data.root": "unused.tsv"}, **{
        "train.steps": 50, "train.lr_decay_steps": 25, "train.eval_every": 12, "train.checkpoint_every": 50,
        "refs.core_fraction": 0.7, "cleannet.calibration_fraction": 0.3})
    detector = cleannet_tf.CleanNetDetector(steps=50, signals="class_mean_margin", config=config)
    detector.fit(features, noisy, verification)
    weights = detector.info_["signal_weights"]
    assert weights["class_mean_margin"] > 0
    assert all(weight == 0 for name, weight in weights.items() if name != "class_mean_margin")
    features, noisy, true = _planted(5)
    flagged = detector.find_label_issues(features, noisy)
    unverified_classes = noisy >= 4
    assert np.mean(flagged[unverified_classes] == (noisy != true)[unverified_classes]) > 0.85
    with pytest.raises(ValueError, match="verify.signals"):
        cleannet_tf.CleanNetDetector(signals="class_mean_margin,no_such_signal")


def test_detector_keeps_the_callers_config_and_plants_no_data_root():
    from cleannet_tf import config as config_lib
    from cleannet_tf.detection.detector import detector_config

    config = config_lib.default_config()
    config.train.lr_decay_steps, config.train.eval_every, config.train.checkpoint_every = 777, 333, 444
    config.refs.core_fraction, config.cleannet.calibration_fraction = 0.9, 0.1
    detector = cleannet_tf.CleanNetDetector(mode="robust", steps=100, num_references=4, config=config, seed=3)
    got = detector.config
    assert (got.train.lr_decay_steps, got.train.eval_every, got.train.checkpoint_every) == (777, 333, 444)
    assert (got.refs.core_fraction, got.cleannet.calibration_fraction) == (0.9, 0.1)
    assert (got.cleannet.mode, got.train.steps, got.refs.num_references, got.seed) == ("robust", 100, 4, 3)
    assert got.data.root == "" and config.cleannet.mode == "paper"  # the caller's config is not modified
    own = cleannet_tf.CleanNetDetector(mode="stacked", steps=100).config
    assert own.data.root == "" and own.train.to_dict() == detector_config("stacked", 100).train.to_dict()
    assert (own.train.lr_decay_steps, own.train.eval_every, own.refs.core_fraction,
            own.cleannet.calibration_fraction) == (50, 25, 0.7, 0.3)
