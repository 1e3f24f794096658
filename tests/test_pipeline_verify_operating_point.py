"""cleannet-verify with verify.operating_point="threshold": metrics.json says so, every class flags at the threshold
(the default "calibrated" is checked in test_pipeline_verify.py)."""

import json
import os

import numpy as np
from conftest import small_train_config, write_feature_dataset

from cleannet_tf.pipeline import scores_tsv
from cleannet_tf.pipeline.artifacts import load_verifier
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.train import run_train
from cleannet_tf.pipeline.verify import run_verify


def test_threshold_operating_point_flags_below_the_one_threshold(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data", num_classes=4, per_class=100, heldout=(3,))
    config = small_train_config(overrides, **{"cleannet.mode": "stacked", "verify.operating_point": "threshold"})
    workdir = str(tmp_path / "work")
    run_refs(config, workdir, progress=False)
    run_train(config, workdir, progress=False)
    run_verify(config, workdir)
    written = json.load(open(os.path.join(workdir, "verify", "metrics.json")))
    assert written["operating_point"] == "threshold"
    assert written["class_thresholds"] == [written["threshold"]] * 4
    assert "prior_noise_rates" not in written
    scores = scores_tsv.read_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"))
    np.testing.assert_array_equal(scores.noisy, scores.scores < written["threshold"])
    model, _, _ = load_verifier(workdir)
    assert model.get_layer("verification_head").class_thresholds is None
