"""CleanNet training: learns planted noise; identical under Mirrored and MultiWorker; resumes after SIGKILL."""

import copy
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import kill_at_marker, small_train_config, write_feature_dataset
from multi_worker import run_two_workers

from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline.artifacts import load_training_inputs
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.train import run_train
from cleannet_tf.training import cleannet, pool

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def feature_workdir(tmp_path):
    overrides, true, noisy = write_feature_dataset(tmp_path / "data")
    config = small_train_config(overrides)
    workdir = str(tmp_path / "work")
    run_refs(config, workdir, progress=False)
    return config, workdir


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_training_learns_planted_noise_and_keeps_best_model(feature_workdir):
    config, workdir = feature_workdir
    metrics = run_train(config, workdir, progress=False)
    assert metrics["detection_error"] < 0.05 and metrics["roc_auc"] > 0.95, metrics
    assert metrics["n_val"] > 100 and metrics["detection_error_heldout"] is None
    saved = json.loads(open(os.path.join(workdir, "cleannet", "metrics.json")).read())
    assert saved["best_step"] == metrics["best_step"] and len(saved["history"]) == 400 // 50
    evaluated = [h for h in saved["history"] if "val" in h]
    assert saved["detection_error"] == min(h["val"]["detection_error"] for h in evaluated)
    # model.keras is the best model: re-scoring the validation rows reproduces its error.
    model = keras.saving.load_model(os.path.join(workdir, "cleannet", "model.keras"))
    data, references = load_training_inputs(config, workdir)
    scores = cleannet.score_pool_rows(model, data, references.references, data.validation)
    assert cleannet.validation_metrics(scores, data)["detection_error"] == pytest.approx(metrics["detection_error"])
    assert os.path.exists(os.path.join(workdir, "cleannet", "logs"))


def test_mirrored_two_devices_equals_default(feature_workdir):
    config, workdir = feature_workdir
    config.train.steps = 40
    data, references = load_training_inputs(config, workdir)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    model_m, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "m"), strategy=mirrored,
                                          progress=False)
    model_d, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "d"), progress=False)
    for got, want in zip(_weights(model_m), _weights(model_d), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_per_class_encoding_trains_like_per_sample(feature_workdir):
    config, workdir = feature_workdir
    config.train.steps = 30
    data, references = load_training_inputs(config, workdir)
    per_class, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "c"), progress=False)
    per_sample, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "s"),
                                             encoding="per_sample", progress=False)
    for got, want in zip(_weights(per_class), _weights(per_sample), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_other_class_negatives_per_class_equals_per_sample_and_changes_training(feature_workdir):
    config, workdir = feature_workdir
    config = copy.deepcopy(config)
    config.train.steps = 30
    data, references = load_training_inputs(config, workdir)
    plain, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "n0"), progress=False)
    config.loss.other_class_weight = 1.0
    per_class, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "n1"), progress=False)
    per_sample, _ = cleannet.train_cleannet(data, references, config, os.path.join(workdir, "n2"),
                                             encoding="per_sample", progress=False)
    for got, want in zip(_weights(per_class), _weights(per_sample), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert max(np.abs(a - b).max() for a, b in zip(_weights(per_class), _weights(plain), strict=True)) > 1e-4


def test_negative_labels_are_other_classes_and_deterministic(feature_workdir):
    config, workdir = feature_workdir
    data, _ = load_training_inputs(config, workdir)
    sampler = pool.StepSampler(data, verified_per_step=8, unverified_per_step=8, seed=3)
    labels = data.labels[:500]
    negatives = sampler.negative_labels(7, labels)
    assert not np.any(negatives == labels) and negatives.min() >= 0 and negatives.max() < len(data.class_names)
    np.testing.assert_array_equal(negatives, sampler.negative_labels(7, labels))
    assert len(np.unique(negatives)) == len(data.class_names)  # every class is drawn for some label


@pytest.mark.slow
def test_multi_worker_two_processes_identical_weights(feature_workdir, tmp_path):
    config, workdir = feature_workdir
    config.train.steps = 40
    results = run_two_workers(config, workdir, tmp_path, "cleannet")
    names = [k for k in results[0].files if k.startswith("arr_")]
    for name in names:
        np.testing.assert_array_equal(results[0][name], results[1][name])
    # And equal to one process on one device with the same global batch.
    data, references = load_training_inputs(config, workdir)
    single, _ = cleannet.train_cleannet(data, references, config, str(tmp_path / "single"), progress=False)
    for i, want in enumerate(_weights(single)):
        np.testing.assert_allclose(results[0][f"arr_{i}"], want, atol=2e-5)
    # Only the chief wrote the outputs.
    assert os.path.exists(os.path.join(workdir, "cleannet", "model.keras"))


def _train_cli(config, workdir, *, stop_at_step=None, marker=None):
    """The cleannet-train command line; with stop_at_step, a process that trains until that step, touches
    `marker` and waits there (to be killed)."""
    flags = [f"--workdir={workdir}", "--config.runtime.strategy=default"]
    for section in ("data", "refs", "cleannet", "train"):
        for name, value in config[section].items():
            flags.append(f"--config.{section}.{name}={value}")
    if stop_at_step is None:
        return [sys.executable, "-m", "cleannet_tf.cli.train", *flags]
    script = f"""
import sys, time
sys.argv = ["cleannet-train", *{flags!r}]  # before the flags are defined: config_flags reads the overrides then
from cleannet_tf.cli import train
from cleannet_tf.training import cleannet as cleannet_training
real = cleannet_training.CleanNetTask.is_log_step
def is_log_step(self, step):
    if step == {stop_at_step}:
        open({str(marker)!r}, "w").close()
        time.sleep(600)
    return real(self, step)
cleannet_training.CleanNetTask.is_log_step = is_log_step
train.run()
"""
    return [sys.executable, "-c", script]


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    config = small_train_config(overrides, **{"train.steps": 1600, "train.checkpoint_every": 100,
                                              "train.eval_every": 500, "train.log_every": 250})
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    for workdir in (killed, clean):
        run_refs(config, workdir, progress=False)
    # Killed at step 1250 (mid-interval): after the evaluations of 500 and 1000 and the checkpoint of 1200.
    marker = tmp_path / "at_step_1250"
    kill_at_marker(_train_cli(config, killed, stop_at_step=1250, marker=marker), marker, "step 1250")
    checkpoints = os.path.join(killed, "cleannet", "checkpoints")
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-1200")
    before = json.loads(open(os.path.join(killed, "cleannet", "metrics.json")).read())
    assert [h["step"] for h in before["history"]] == [250, 500, 750, 1000] and before["step"] == 1000
    subprocess.run(_train_cli(config, killed), check=True, capture_output=True)
    subprocess.run(_train_cli(config, clean), check=True, capture_output=True)
    resumed = json.loads(open(os.path.join(killed, "cleannet", "metrics.json")).read())
    uninterrupted = json.loads(open(os.path.join(clean, "cleannet", "metrics.json")).read())
    assert resumed["best_step"] == uninterrupted["best_step"]
    assert resumed["detection_error"] == pytest.approx(uninterrupted["detection_error"], abs=1e-6)
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in uninterrupted["history"]]
    a = keras.saving.load_model(os.path.join(killed, "cleannet", "model.keras"))
    b = keras.saving.load_model(os.path.join(clean, "cleannet", "model.keras"))
    for got, want in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_inputs_fail_before_training(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    config = small_train_config(overrides)
    workdir = str(tmp_path / "work")
    run_refs(config, workdir, progress=False)

    npz = np.load(overrides["data.features"])
    features = npz["features"].copy()
    features[7, 3] = np.nan
    np.savez(tmp_path / "nan.npz", keys=npz["keys"], features=features)
    config.data.features = str(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match=r"img00007\.jpg.*(NaN|Inf)"):
        run_train(config, workdir, progress=False)

    np.savez(tmp_path / "wide.npz", keys=npz["keys"], features=np.concatenate([npz["features"]] * 2, axis=1))
    config.data.features = str(tmp_path / "wide.npz")
    with pytest.raises(ValueError, match="Features have dimension 48 but the reference sets 24"):
        run_train(config, workdir, progress=False)

    config.data.features = overrides["data.features"]
    table = load_table(config, workdir)
    table.verification[table.split == data_table.SPLIT_TRAIN] = -1
    with pytest.raises(ValueError, match="No verified training rows"):
        run_train(config, workdir, table=table, progress=False)


def test_heldout_classes_get_no_verified_training_rows(tmp_path):
    overrides, _, noisy = write_feature_dataset(tmp_path / "data", heldout=(0, 1), verified_fraction=0.5)
    config = small_train_config(overrides)
    workdir = str(tmp_path / "work")
    run_refs(config, workdir, progress=False)
    data, _ = load_training_inputs(config, workdir)
    assert not np.isin(data.labels[data.verified_train], [0, 1]).any()
    assert np.isin(data.labels[data.validation], [0, 1]).any()  # they keep their validation rows
    metrics = run_train(config, workdir, progress=False)
    assert metrics["detection_error_heldout"] is not None and metrics["best"]["n_val_heldout"] > 0
    assert set(metrics["best"]["per_class_error"]) >= {"class0", "class1"}


def test_margin_scores_are_own_minus_best_other_class(feature_workdir):
    from cleannet_tf.model.cleannet import encode_classes, query_encoder_of

    config, workdir = feature_workdir
    data, references = load_training_inputs(config, workdir)
    model = cleannet.build_model_from_config(config, data.feature_dim, references.references.shape[1])
    rows = data.validation[:40]
    plain = cleannet.score_pool_rows(model, data, references.references, rows)
    margin = cleannet.score_pool_rows(model, data, references.references, rows, margin=True)
    classes = np.asarray(encode_classes(model, references.references))
    query = np.asarray(query_encoder_of(model)(data.features[rows])["query_embedding"])
    cosine = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        classes / np.linalg.norm(classes, axis=1, keepdims=True)).T
    own = cosine[np.arange(len(rows)), data.labels[rows]]
    cosine[np.arange(len(rows)), data.labels[rows]] = -np.inf
    np.testing.assert_allclose(plain, own, atol=1e-5)
    np.testing.assert_allclose(margin, own - cosine.max(axis=1), atol=1e-5)
