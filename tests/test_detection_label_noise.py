"""The cleanlab-shaped public API: find_label_issues and sample_weights."""

import subprocess
import sys

import numpy as np
import pytest

import cleannet_tf


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="needs a threshold"):
        cleannet_tf.sample_weights([0.1], mode="hard")
    with pytest.raises(ValueError, match="mode must be one of"):
        cleannet_tf.sample_weights([0.1], mode="softer")
    with pytest.raises(ValueError, match=r"scores must be \(N,\)"):
        cleannet_tf.find_label_issues(np.zeros((2, 2)), threshold=0.0)
    with pytest.raises(TypeError):
        cleannet_tf.find_label_issues([0.1], 0.0)  # options are keyword-only


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
