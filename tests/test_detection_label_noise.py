"""The cleanlab-shaped public API: find_label_issues and sample_weights."""

import subprocess
import sys

import numpy as np
import pytest

import cleannet_tf
from cleannet_tf.detection import calibration as calibration_lib
from cleannet_tf.detection import label_noise


def test_find_label_issues_mask_and_ranking():
    scores = np.array([0.9, -0.2, 0.05, 0.3, 0.05, 0.6])
    mask = cleannet_tf.find_label_issues(scores, threshold=0.1)
    np.testing.assert_array_equal(mask, [False, True, True, False, True, False])
    ranked = cleannet_tf.find_label_issues(scores, threshold=0.1, return_ranked=True)
    np.testing.assert_array_equal(ranked, [1, 2, 4])  # lowest score first, ties by index
    assert set(ranked) == set(np.nonzero(mask)[0])


def test_sample_weights_formulas():
    scores = np.array([0.8, -0.3, 0.2, np.nan])
    np.testing.assert_allclose(cleannet_tf.sample_weights(scores, mode="soft"), [0.8, 0.0, 0.2, 1.0], atol=1e-7)
    np.testing.assert_array_equal(cleannet_tf.sample_weights(scores, mode="hard", threshold=0.25), [1, 0, 0, 1])
    np.testing.assert_array_equal(cleannet_tf.sample_weights(scores, mode="none"), [1, 1, 1, 1])
    verified = cleannet_tf.sample_weights(scores, mode="soft", verification=np.array([0, 1, -1, -1]))
    np.testing.assert_allclose(verified, [0.0, 1.0, 0.2, 1.0], atol=1e-7)  # verification labels take precedence


def test_soft_weights_of_an_unsure_detector_are_the_base_rate_not_zero():
    # A stacked detector that knows nothing scores every pair near 0 (P = 0.5); 70% of the labels are right.
    rng = np.random.default_rng(0)
    correct = rng.random(2000) < 0.7
    scores = rng.normal(0.0, 0.02, 2000)
    assert cleannet_tf.sample_weights(scores, mode="soft").mean() < 0.02  # the old max(0, 2P - 1): collapse
    calibration = calibration_lib.fit_calibration(scores[:400], correct[:400].astype(int), scoring="stacked")
    probabilities = calibration_lib.correct_probability(scores, scoring="stacked", calibration=calibration)
    weights = cleannet_tf.sample_weights(scores, mode="soft", probabilities=probabilities)
    base_rate = correct[:400].mean()  # of the verified pairs the calibration sees (0.64 here)
    assert abs(weights.mean() - base_rate) < 0.02 and weights.min() > 0.5
    # Without calibration the stacked score's own probability: (s + 1) / 2.
    np.testing.assert_allclose(calibration_lib.correct_probability(np.array([-1.0, 0.0, 0.5]), scoring="stacked"),
                               [0.0, 0.5, 0.75])
    # Verified labels win over the probability (1 -> 1, 0 -> 0); NaN scores (not scored) get 1.
    verified = cleannet_tf.sample_weights(np.array([0.9, -0.9, 0.0, np.nan]), mode="soft",
                                          probabilities=np.array([0.95, 0.05, 0.5, np.nan]),
                                          verification=np.array([0, 1, -1, -1]))
    np.testing.assert_allclose(verified, [0.0, 1.0, 0.5, 1.0], atol=1e-7)


def test_noise_rates_from_calibrated_probabilities_match_a_known_rate():
    # Three classes with noise rates 0.1, 0.3, 0.5; scores N(+1.5, 1) for right labels, N(-1.5, 1) for wrong.
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 3000)
    wrong = rng.random(len(labels)) < np.array([0.1, 0.3, 0.5])[labels]
    scores = np.where(wrong, -1.5, 1.5) + rng.normal(0, 1, len(labels))
    verified = rng.permutation(len(labels))[:450]  # 5% verified, drawn at random
    verification = np.full(len(labels), -1)
    verification[verified] = (~wrong[verified]).astype(int)
    calibration = calibration_lib.fit_calibration(scores[verified], verification[verified], scoring="margin")
    probabilities = calibration_lib.correct_probability(scores, scoring="margin", calibration=calibration)
    per_class, overall = label_noise.estimate_noise_rates(probabilities, labels, num_classes=3,
                                                          verification=verification)
    assert abs(overall - wrong.mean()) < 0.02
    true_per_class = np.array([wrong[labels == c].mean() for c in range(3)])
    np.testing.assert_allclose(per_class, true_per_class, atol=0.06)
    # Verified rows count as their labels say: all verified -> the exact rates; an empty class -> NaN.
    exact, exact_overall = label_noise.estimate_noise_rates(probabilities, labels, num_classes=4,
                                                            verification=(~wrong).astype(int))
    np.testing.assert_allclose(exact[:3], true_per_class)
    assert np.isnan(exact[3]) and exact_overall == pytest.approx(wrong.mean())


def test_per_class_offsets_fix_a_class_the_shared_calibration_misjudges():
    # Three classes, noise 0.2 / 0.4 / 0.3, one Platt calibration for all: class 1's wrong labels score like
    # right ones (its scores are shifted up by 1.2), so the shared P underestimates its noise rate.
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 4000)
    wrong = rng.random(len(labels)) < np.array([0.2, 0.4, 0.3])[labels]
    scores = np.where(wrong, -1.0, 1.0) + rng.normal(0, 1, len(labels)) + np.where(labels == 1, 1.2, 0.0)
    verified = rng.permutation(len(labels))[:600]
    verification = np.full(len(labels), -1)
    verification[verified] = (~wrong[verified]).astype(int)
    calibration = calibration_lib.fit_calibration(scores[verified], verification[verified], scoring="margin")
    probabilities = calibration_lib.correct_probability(scores, scoring="margin", calibration=calibration)
    true_per_class = np.array([wrong[labels == c].mean() for c in range(3)])
    shared, _ = label_noise.estimate_noise_rates(probabilities, labels, num_classes=3)
    assert shared[1] < true_per_class[1] - 0.08  # the shared calibration misses class 1
    offsets = calibration_lib.class_offsets(probabilities, labels, verification, num_classes=3,
                                        classes=np.array([True, True, False]))
    assert offsets[1] < -0.5 and offsets[2] == 0.0  # class 2 (held out) keeps the shared calibration
    shifted = calibration_lib.shift_probabilities(probabilities, labels, offsets)
    per_class, _ = label_noise.estimate_noise_rates(shifted, labels, num_classes=3)
    assert np.all(np.abs(per_class[:2] - true_per_class[:2]) < 0.03), (per_class, true_per_class)
    np.testing.assert_allclose(shifted[labels == 2], probabilities[labels == 2], rtol=1e-12)
    # The offset is the MAP intercept: the class's verified rows' mean shifted P is near their share right.
    rows = (labels == 1) & (verification >= 0)
    assert abs(shifted[rows].mean() - verification[rows].mean()) < 0.01
    # No verified row of a class: offset 0; one kind only: finite (the prior bounds it).
    only_right = np.where(labels == 0, (verification >= 0).astype(int), -1)
    assert np.all(np.isfinite(calibration_lib.class_offsets(probabilities, labels, only_right, num_classes=3)))
    assert calibration_lib.class_offsets(probabilities, labels, only_right, num_classes=3)[1:].tolist() == [0.0, 0.0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs a threshold"):
        cleannet_tf.sample_weights([0.1], mode="hard")
    with pytest.raises(ValueError, match="mode must be one of"):
        cleannet_tf.sample_weights([0.1], mode="softer")
    with pytest.raises(ValueError, match=r"scores must be \(N,\)"):
        cleannet_tf.find_label_issues(np.zeros((2, 2)), threshold=0.0)
    with pytest.raises(TypeError):
        cleannet_tf.find_label_issues([0.1], 0.0)  # options are keyword-only
    with pytest.raises(ValueError, match="needs a calibration"):
        calibration_lib.correct_probability([0.1], scoring="cosine")
    with pytest.raises(ValueError, match="both kinds"):
        calibration_lib.fit_calibration([0.1, 0.2], [1, 1], scoring="cosine")


@pytest.mark.slow
def test_load_model_after_plain_import(tmp_path):
    model = cleannet_tf.build_cleannet(8, 2)
    model.save(tmp_path / "model.keras")
    code = ("import keras, cleannet_tf, numpy as np; "
            f"m = keras.saving.load_model({str(tmp_path / 'model.keras')!r}); "
            "print(m({'query_features': np.ones((1, 8)), 'reference_features': np.ones((1, 2, 8))})['score'].shape)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(1,)" in result.stdout


def test_the_numpy_api_loads_no_tensorflow():
    code = ("import sys, numpy as np, cleannet_tf; from cleannet_tf.detection import label_noise; "
            "cleannet_tf.find_label_issues(np.zeros(3), threshold=0.5); "
            "label_noise.correct_probability(np.zeros(3), scoring='stacked'); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
