"""cleannet-verify with verify.operating_point="calibrated": metrics.json says so, each class flags below its own
threshold in scores.tsv, the served verifier and CleanNetDetector alike (the default "threshold" is checked in
test_pipeline_verify.py)."""

import json
import os

import numpy as np
import pytest
from conftest import small_train_config, write_feature_dataset

from cleannet_tf.detection import label_noise
from cleannet_tf.detection.detector import CleanNetDetector
from cleannet_tf.pipeline import scores_tsv
from cleannet_tf.pipeline.artifacts import load_training_inputs, load_verifier
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.train import run_train
from cleannet_tf.pipeline.verify import run_verify


def _verified(tmp_path, operating_point: str):
    """(config, workdir, metrics.json) of refs, train and verify on a small stacked dataset (class 3 held out)."""
    overrides, _, _ = write_feature_dataset(tmp_path / "data", num_classes=4, per_class=100, heldout=(3,))
    config = small_train_config(overrides, **{"cleannet.mode": "stacked", "verify.operating_point": operating_point})
    workdir = str(tmp_path / "work")
    run_refs(config, workdir, progress=False)
    run_train(config, workdir, progress=False)
    run_verify(config, workdir)
    return config, workdir, json.load(open(os.path.join(workdir, "verify", "metrics.json")))


def test_calibrated_operating_point_flags_below_each_class_threshold(tmp_path):
    config, workdir, written = _verified(tmp_path, "calibrated")
    assert written["operating_point"] == "calibrated"
    assert len(set(written["class_thresholds"])) == 4  # one per class, from each class's estimated prior
    assert len(written["prior_noise_rates"]) == 4 and 0 < written["calibration_noise_rate"] < 1
    scores = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    thresholds = dict(zip(written["class_names"], written["class_thresholds"], strict=True))
    pair_thresholds = np.array([thresholds[label] for label in scores.labels])
    np.testing.assert_array_equal(scores.noisy, scores.scores < pair_thresholds)
    np.testing.assert_array_equal(scores.weight_hard == 0, scores.noisy)
    assert written["n_flagged"] == int(scores.noisy.sum())
    # The saved verifier (served is_noisy) and a CleanNetDetector loaded from it flag the same pairs.
    model, _, _ = load_verifier(workdir)
    table = load_table(config, workdir)
    data, _ = load_training_inputs(config, workdir, table)
    served = model({"features": data.features, "label": data.labels.astype(np.int64)})
    np.testing.assert_array_equal(np.asarray(served["is_noisy"]), scores.noisy)
    detector = CleanNetDetector.load(os.path.join(workdir, "verify", "verifier.keras"))
    np.testing.assert_array_equal(detector.find_label_issues(data.features, data.labels), scores.noisy)
    np.testing.assert_array_equal(detector.sample_weights(data.features, data.labels, mode="hard") == 0, scores.noisy)
    np.testing.assert_array_equal(label_noise.find_label_issues(scores.scores, threshold=pair_thresholds),
                                  scores.noisy)


def test_probability_operating_point_flags_where_the_stacked_probability_is_below_one_half(tmp_path):
    config, workdir, written = _verified(tmp_path, "probability")
    assert written["operating_point"] == "probability"
    assert written["threshold"] == 0.0 and set(written["class_thresholds"]) == {0.0}
    assert "P(label correct) fitted on them is 1/2" in written["threshold_rows"]
    scores = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    np.testing.assert_array_equal(scores.noisy, scores.scores < 0.0)
    assert 0 < written["n_flagged"] == int(scores.noisy.sum()) < len(scores.scores)
    model, _, _ = load_verifier(workdir)
    data, _ = load_training_inputs(config, workdir, load_table(config, workdir))
    served = model({"features": data.features, "label": data.labels.astype(np.int64)})
    np.testing.assert_array_equal(np.asarray(served["is_noisy"]), scores.noisy)


def test_probability_operating_point_needs_the_stacked_mode():
    from cleannet_tf.config import default_config, validate

    config = default_config()
    config.data.root = "/data/photos"
    config.cleannet.mode = "robust"
    config.verify.operating_point = "probability"
    with pytest.raises(ValueError, match=r"config\.verify\.operating_point: probability needs cleannet\.mode=stacked"):
        validate(config)
