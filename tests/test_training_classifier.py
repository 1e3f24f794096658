"""The weighted classifier: loss, gradients, weights from cleannet-verify's scores, the pipeline step."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import resume_then_run_clean

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline import records, runner, scores_tsv
from cleannet_tf.pipeline.artifacts import classifier_weights
from cleannet_tf.pipeline.classifier import run_train_classifier
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import classifier_output_dir
from cleannet_tf.training import classifier
from cleannet_tf.training.classifier import weighted_cross_entropy


def test_weighted_loss_equals_hand_weighted_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.array([0, 3, 1, 1, 2])
    weights = np.array([1.0, 0.0, 0.5, 0.25, 1.0], np.float32)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = -np.sum(weights * log_softmax[np.arange(5), labels]) / 8  # global batch of 8 over 2 replicas
    got = weighted_cross_entropy(labels, logits, weights, global_batch_size=8)
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


def test_zero_weight_removes_a_samples_gradient():
    keras.utils.set_random_seed(0)
    dense = keras.layers.Dense(3)
    features = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    labels = np.array([0, 2, 1, 2])
    dense(features)

    def gradients(x, y, w):
        with tf.GradientTape() as tape:
            loss = weighted_cross_entropy(y, dense(x), w, global_batch_size=4)
        return tape.gradient(loss, dense.trainable_variables)

    with_zero = gradients(features, labels, np.array([1.0, 0.0, 0.7, 1.0], np.float32))
    without = gradients(features[[0, 2, 3]], labels[[0, 2, 3]], np.array([1.0, 0.7, 1.0], np.float32))
    for a, b in zip(with_zero, without, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    changed = gradients(features, labels, np.array([1.0, 0.5, 0.7, 1.0], np.float32))
    assert np.abs(changed[0] - with_zero[0]).max() > 1e-4


@pytest.fixture
def verified_image_workdir(tmp_path, make_images):
    """A TSV image dataset (3 classes, train / val / test) with a cleannet-verify output written beside it."""
    paths = make_images(tmp_path / "data", 48, size=(32, 32))
    splits = ["train"] * 30 + ["val"] * 6 + ["test"] * 12
    verified = ["1", "0"] + [""] * 28 + ["1"] * 6 + [""] * 12
    lines = ["path\tlabel\tverified\tsplit"] + [
        f"{os.path.basename(p)}\tclass{i % 3}\t{verified[i]}\t{splits[i]}" for i, p in enumerate(paths)]
    (tmp_path / "data" / "labels.tsv").write_text("\n".join(lines) + "\n")
    config = config_lib.default_config()
    config.data.format, config.data.root = "tsv", str(tmp_path / "data" / "labels.tsv")
    config.model.backbone, config.model.weights = "small_cnn", "random"
    config.model.image_height = config.model.image_width = 32
    config.classifier.epochs, config.classifier.batch_size, config.classifier.initial_weights = 2, 8, "random"
    config = config_lib.validate(config)
    workdir = str(tmp_path / "work")
    table = load_table(config, workdir)
    pool = np.nonzero(table.split != data_table.SPLIT_TEST)[0]
    scores = np.linspace(-0.5, 0.9, len(pool)).astype(np.float32)
    os.makedirs(os.path.join(workdir, "verify"))
    names = np.asarray(table.class_names)
    scores_tsv.write_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"), scores_tsv.ScoresTable(
        keys=table.keys[pool], labels=names[table.labels[pool]], scores=scores, noisy=scores < 0.2,
        weight_soft=np.clip(scores, 0, 1), weight_hard=scores >= 0.2, suggested_labels=names[table.labels[pool]],
        suggested_scores=scores))
    with open(os.path.join(workdir, "verify", "metrics.json"), "w") as f:
        json.dump({"threshold": 0.2}, f)
    return config, workdir, table, pool, scores


def test_weights_from_scores_with_verified_labels_first(verified_image_workdir):
    config, workdir, table, pool, scores = verified_image_workdir
    soft = classifier_weights(table, workdir, "soft")
    hard = classifier_weights(table, workdir, "hard")
    expected_soft = np.clip(scores, 0, 1)
    expected_hard = (scores >= 0.2).astype(np.float32)
    for weights, expected in ((soft, expected_soft), (hard, expected_hard)):
        expected = np.where(table.verification[pool] == 1, 1.0, np.where(table.verification[pool] == 0, 0.0,
                                                                         expected))
        np.testing.assert_allclose(weights[pool], expected, atol=1e-6)
        assert np.all(weights[table.split == data_table.SPLIT_TEST] == 1.0)
    assert soft[pool][0] == 1.0 and soft[pool][1] == 0.0  # the two verified train rows, whatever their scores


def test_weighted_classifier_through_the_pipeline(verified_image_workdir):
    config, workdir, table, pool, scores = verified_image_workdir
    config.classifier.weighting = "hard"
    metrics = run_train_classifier(config, workdir, table=table, progress=False)
    written = json.load(open(os.path.join(workdir, "classifier_hard", "metrics.json")))
    assert written["weighting"] == "hard" and 0.0 <= written["test_accuracy"] <= 1.0
    weights = classifier_weights(table, workdir, "hard")
    assert metrics["n_train"] == int(np.sum(weights[pool] > 0))  # weight-0 images are not trained on
    assert metrics["steps"] == config.classifier.epochs * (len(pool) // config.classifier.batch_size)
    assert os.path.exists(os.path.join(workdir, "classifier_hard", "model.keras"))
    assert not records.step_complete("train_classifier", config, workdir)  # the library function records nothing
    runner.run_step("train_classifier", config, workdir, table=table)  # the step: its finished outputs, recorded
    record = records.read_record(workdir, "train_classifier_hard")  # (not complete: verify here has no record)
    assert "classifier_hard/model.keras" in record["outputs"] and record["inputs"] == {"verify": None}


def test_stale_scores_are_an_error(verified_image_workdir):
    config, workdir, table, pool, scores = verified_image_workdir
    path = os.path.join(workdir, "verify", "scores.tsv")
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines[:10]) + "\n")
    with pytest.raises(ValueError, match="have no score"):
        classifier_weights(table, workdir, "soft")
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="run cleannet-verify first"):
        classifier_weights(table, workdir, "soft")


def test_finetune_phase_on_verified_correct_images_resumes_like_an_uninterrupted_run(verified_image_workdir):
    config, workdir, table, pool, scores = verified_image_workdir
    config.classifier.batch_size, config.classifier.finetune_epochs = 4, 1
    config.classifier.finetune_learning_rate = 0.02
    weights = classifier_weights(table, workdir, "soft")
    model, metrics = classifier.train_classifier(table, config, os.path.join(workdir, "whole"),
                                                     sample_weights=weights, progress=False)
    verified_correct = int(np.sum((table.verification == 1) & (table.split != data_table.SPLIT_TEST)))
    noisy_steps = 2 * (len(pool) // 4)  # weight-0 images are skipped, the epochs keep the whole pool's length
    assert metrics["n_finetune"] == verified_correct == 7
    assert metrics["steps"] == noisy_steps + verified_correct // 4
    assert [h["phase"] for h in metrics["history"]] == ["noisy", "noisy", "finetune"]
    schedule = classifier.NoisyThenFinetuneSchedule(0.01, noisy_steps, 0.02)
    assert float(schedule(noisy_steps - 1)) < 0.001 and float(schedule(noisy_steps)) == pytest.approx(0.02)

    # Stopped after the noisy phase, then restarted with the fine-tuning: the same weights.
    stopped = config.copy_and_resolve_references()
    stopped.classifier.finetune_epochs = 0
    classifier.train_classifier(table, stopped, os.path.join(workdir, "parts"), sample_weights=weights,
                                    progress=False)
    resumed, resumed_metrics = classifier.train_classifier(table, config, os.path.join(workdir, "parts"),
                                                               sample_weights=weights, progress=False)
    assert [h["step"] for h in resumed_metrics["history"]] == [metrics["steps"]]
    for a, b in zip(model.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.fixture
def features_workdir(tmp_path):
    """A TSV dataset given as frozen features (data.features, no images): 4 separable classes, 25% wrong labels,
    train / val / test rows (the test rows' labels true), and a cleannet-verify output that knows the wrong ones."""
    rng = np.random.default_rng(0)
    num_classes, per_class, dim = 4, 60, 16
    true = np.repeat(np.arange(num_classes), per_class)
    centres = rng.normal(0, 1, (num_classes, dim)) * 3
    features = (centres[true] + rng.normal(0, 1, (len(true), dim))).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, len(true), p=[0.6, 0.1, 0.3])]
    noisy = true.copy()
    flip = (rng.random(len(true)) < 0.25) & (split != "test")
    noisy[flip] = (true[flip] + rng.integers(1, num_classes, int(flip.sum()))) % num_classes
    keys = [f"img{i:04d}.jpg" for i in range(len(true))]
    verified = [str(int(noisy[i] == true[i])) if split[i] == "val" else "" for i in range(len(true))]
    lines = ["path\tlabel\tverified\tsplit"] + [f"{keys[i]}\tclass{noisy[i]}\t{verified[i]}\t{split[i]}"
                                                 for i in range(len(true))]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n")
    np.savez(tmp_path / "features.npz", keys=np.array(keys), features=features)
    config = config_lib.default_config()
    config.data.format, config.data.root = "tsv", str(tmp_path / "labels.tsv")
    config.data.features, config.data.check_images = str(tmp_path / "features.npz"), False
    config.classifier.epochs, config.classifier.batch_size, config.classifier.learning_rate = 4, 16, 0.05
    config = config_lib.validate(config)
    workdir = str(tmp_path / "work")
    table = load_table(config, workdir)
    pool = np.nonzero(table.split != data_table.SPLIT_TEST)[0]
    row_of = {key: i for i, key in enumerate(keys)}
    is_wrong = flip[[row_of[key] for key in table.keys[pool]]]
    scores = np.where(is_wrong, -0.6, 0.6).astype(np.float32) + rng.normal(0, 0.1, len(pool)).astype(np.float32)
    p_correct = np.where(is_wrong, 0.1, 0.9).astype(np.float32)
    os.makedirs(os.path.join(workdir, "verify"))
    names = np.asarray(table.class_names)
    scores_tsv.write_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"), scores_tsv.ScoresTable(
        keys=table.keys[pool], labels=names[table.labels[pool]], scores=scores, noisy=scores < 0.0,
        weight_soft=p_correct, weight_hard=scores >= 0.0, suggested_labels=names[table.labels[pool]],
        suggested_scores=scores, p_correct=p_correct))
    with open(os.path.join(workdir, "verify", "metrics.json"), "w") as f:
        json.dump({"threshold": 0.0}, f)
    return config, workdir, table, pool, is_wrong


@pytest.mark.parametrize("weighting", ["none", "soft", "hard"])
def test_features_head_trains_on_frozen_features_in_every_weighting(features_workdir, weighting):
    config, workdir, table, pool, is_wrong = features_workdir
    config.classifier.weighting = weighting
    metrics = run_train_classifier(config, workdir, table=table, progress=False)
    directory = classifier_output_dir(workdir, weighting)
    written = json.load(open(os.path.join(directory, "metrics.json")))
    assert written["weighting"] == weighting and written["input"] == "features"
    assert written["n_test"] == int(np.sum(table.split == data_table.SPLIT_TEST)) > 50
    assert written["test_accuracy"] > 0.9  # separable classes, 25% wrong labels
    weights = classifier_weights(table, workdir, weighting) if weighting != "none" else np.ones(len(table))
    if weighting == "soft":  # scores.tsv's weight_soft (P(label correct)), the verified rows' labels first
        verified = table.verification[pool]
        expected = np.where(verified == 1, 1.0, np.where(verified == 0, 0.0, np.where(is_wrong, 0.1, 0.9)))
        np.testing.assert_allclose(weights[pool], expected, atol=1e-6)
    assert metrics["n_train"] == int(np.sum(weights[pool] > 0))
    model = keras.saving.load_model(os.path.join(directory, "model.keras"))
    test = table.split == data_table.SPLIT_TEST
    features = np.load(config.data.features)["features"]
    row_of = {key: i for i, key in enumerate(np.load(config.data.features)["keys"])}
    test_features = features[[row_of[key] for key in table.keys[test]]]
    predicted = np.argmax(model.predict({"features": test_features}, verbose=0)["probabilities"], axis=1)
    assert np.mean(predicted == table.labels[test]) == pytest.approx(written["test_accuracy"])


def test_features_head_resumes_after_sigkill_like_an_uninterrupted_run(features_workdir, tmp_path):
    config, workdir, table, pool, _ = features_workdir
    config.classifier.weighting, config.classifier.epochs = "soft", 40
    flags = [f"--workdir={workdir}", "--config.data.format=tsv", f"--config.data.root={config.data.root}",
             f"--config.data.features={config.data.features}", "--config.data.check_images=False",
             "--config.classifier.weighting=soft", "--config.classifier.epochs=40",
             "--config.classifier.batch_size=16", "--config.classifier.learning_rate=0.05",
             "--config.runtime.strategy=default"]
    checkpoints = os.path.join(workdir, "classifier_soft", "checkpoints")
    process = subprocess.Popen([sys.executable, "-m", "cleannet_tf.cli.train_classifier", *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not (
                os.path.isdir(checkpoints) and len([n for n in os.listdir(checkpoints) if n.endswith(".index")]) >= 2):
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the classifier finished before it could be killed"
    last = int(tf.train.latest_checkpoint(checkpoints).rsplit("-", 1)[1])
    steps_per_epoch = len(pool) // 16
    assert 0 < last < 40 * steps_per_epoch
    assert not records.step_complete("train_classifier", config, workdir)

    resumed, uninterrupted, model_a, model_b = resume_then_run_clean(
        config, workdir, table, str(tmp_path / "clean"), last=last, steps_per_epoch=steps_per_epoch)
    assert resumed["steps"] == uninterrupted["steps"] == 40 * steps_per_epoch
    assert resumed["test_accuracy"] == uninterrupted["test_accuracy"]
    for a, b in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
