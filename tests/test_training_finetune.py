"""Fine-tuning from a block on: the cached and uncached paths train the same model, under one device and
MirroredStrategy; mixed precision; the per-image weights; early stopping on held-apart rows; resuming a kill."""

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
from conftest import resume_then_run_clean, stand_in_lite0_weights
from multi_worker import run_two_workers

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.features import backbones, block_cache
from cleannet_tf.pipeline import records, runner, scores_tsv
from cleannet_tf.pipeline.artifacts import classifier_weights
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.training import distribute, finetune

TRAIN_FROM = "block11"  # 32x32 images: blocks 11..15 and the head run on 1x1 maps


@pytest.fixture
def image_workdir(request, tmp_path, make_images):
    """A TSV image dataset (3 classes; 40 train, 8 val with verification labels, 12 test) of SIZE x SIZE images
    (32, or the test's indirect parameter), a config fine-tuning EfficientNet-Lite0 (random stand-in weights) from block
    11, and a cleannet-verify output beside it."""
    size = getattr(request, "param", 32)
    paths = make_images(tmp_path / "data", 60, size=(size, size))
    splits = ["train"] * 40 + ["val"] * 8 + ["test"] * 12
    verified = [""] * 40 + ["1", "0"] * 4 + [""] * 12
    lines = ["path\tlabel\tverified\tsplit"] + [
        f"{os.path.basename(p)}\tclass{i % 3}\t{verified[i]}\t{splits[i]}" for i, p in enumerate(paths)]
    (tmp_path / "data" / "labels.tsv").write_text("\n".join(lines) + "\n")
    config = config_lib.default_config()
    config.data.format, config.data.root = "tsv", str(tmp_path / "data" / "labels.tsv")
    config.model.backbone, config.model.weights = "efficientnet_lite0", "random"
    config.model.image_height = config.model.image_width = size
    config.input.resize = "squash"
    config.classifier.epochs, config.classifier.batch_size, config.classifier.learning_rate = 3, 8, 0.05
    config.classifier.initial_weights = stand_in_lite0_weights(str(tmp_path / "backbone.weights.h5"), size)
    config.classifier.train_from = TRAIN_FROM
    config.classifier.holdout_fraction, config.classifier.mixed_precision = 0.2, "off"
    config = config_lib.validate(config)
    workdir = str(tmp_path / "work")
    table = load_table(config, workdir)
    pool = np.nonzero(table.split != data_table.SPLIT_TEST)[0]
    scores = np.random.default_rng(1).uniform(-0.5, 0.9, len(pool)).astype(np.float32)
    names = np.asarray(table.class_names)
    os.makedirs(os.path.join(workdir, "verify"))
    scores_tsv.write_scores_tsv(os.path.join(workdir, "verify", "scores.tsv"), scores_tsv.ScoresTable(
        keys=table.keys[pool], labels=names[table.labels[pool]], scores=scores, noisy=scores < 0.2,
        weight_soft=np.clip(scores, 0, 1), weight_hard=scores >= 0.2, suggested_labels=names[table.labels[pool]],
        suggested_scores=scores))
    with open(os.path.join(workdir, "verify", "metrics.json"), "w") as f:
        json.dump({"threshold": 0.2}, f)
    return config, workdir, table


def _train(config, table, directory, *, cache, strategy=None, weights=None):
    config = config.copy_and_resolve_references()
    config.classifier.frozen_cache = "on" if cache else "off"
    return finetune.train_finetune(table, config, os.path.join(directory, "classifier"),
                                   cache_dir=os.path.join(directory, "cache"), sample_weights=weights,
                                   initial_weights=config.classifier.initial_weights, strategy=strategy, progress=False,
                                   cache_dtype="float32")


def _assert_same_weights(model_a, model_b, atol=1e-4):
    weights_a, weights_b = model_a.get_weights(), model_b.get_weights()
    assert len(weights_a) == len(weights_b)
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-3)


@pytest.mark.parametrize("image_workdir", [64], indirect=True)  # 2x2 maps before the head: BatchNorm over 4x
# MirroredStrategy runs in its own process (test_mixed_precision_...): in this one, a second MirroredStrategy on
# the same devices reuses collective instance keys and clashes with the first's shapes (a later test's fails).
@pytest.mark.parametrize("strategy_name", ["default"])
def test_cached_and_uncached_fine_tunes_train_the_same_model(image_workdir, tmp_path, strategy_name):
    config, workdir, table = image_workdir
    # From the head on: deeper splits train the same way, but with random stand-in weights their BatchNorm
    # layers (training mode, batches of 8) amplify the float noise between two forwards (~1e-5) step by step.
    config.classifier.train_from, config.classifier.learning_rate, config.classifier.epochs = "head", 0.01, 2
    strategy = distribute.build_strategy(strategy_name)
    assert strategy.num_replicas_in_sync == (2 if strategy_name == "mirrored" else 1)
    weights = classifier_weights(table, workdir, "soft")
    cached, cached_metrics = _train(config, table, str(tmp_path / "cached"), cache=True, strategy=strategy,
                                    weights=weights)
    uncached, uncached_metrics = _train(config, table, str(tmp_path / "uncached"), cache=False, strategy=strategy,
                                        weights=weights)
    assert cached_metrics["frozen_cache"] and not uncached_metrics["frozen_cache"]
    assert cached_metrics["steps"] == uncached_metrics["steps"] == 2 * ((48 - 10) // 8)
    assert cached_metrics["n_holdout"] == uncached_metrics["n_holdout"] == 10  # 20% of 48 training rows
    _assert_same_weights(cached, uncached, atol=2e-3)
    assert cached_metrics["test_accuracy"] == uncached_metrics["test_accuracy"]
    for a, b in zip(cached_metrics["history"], uncached_metrics["history"], strict=True):
        assert a["val"]["accuracy"] == pytest.approx(b["val"]["accuracy"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    # Only the trained blocks and the softmax moved; the frozen layers kept their initial weights.
    initial = backbones.build_backbone("efficientnet_lite0", image_size=(64, 64),
                                       weights=config.classifier.initial_weights)
    changed = {layer.name for layer in cached.get_layer("backbone").layers
               if any(not np.array_equal(a, b) for a, b in zip(
                   layer.get_weights(), initial.get_layer(layer.name).get_weights(), strict=True))}
    assert changed == {"head_conv", "head_bn"}


def test_mixed_precision_under_mirrored_strategy_saves_a_float32_classifier(image_workdir, tmp_path):
    """The real command in its own process: in a process where another MirroredStrategy has run, Keras'
    LossScaleOptimizer's collectives (inside its cond) clash with the earlier ones' instance keys."""
    config, workdir, table = image_workdir
    flags = [f"--workdir={workdir}", "--config.data.format=tsv", f"--config.data.root={config.data.root}",
             "--config.model.backbone=efficientnet_lite0", "--config.model.weights=random",
             "--config.model.image_height=32", "--config.model.image_width=32", "--config.input.resize=squash",
             f"--config.classifier.initial_weights={config.classifier.initial_weights}",
             f"--config.classifier.train_from={TRAIN_FROM}",
             "--config.classifier.mixed_precision=on", "--config.classifier.epochs=4",
             "--config.classifier.batch_size=8", "--config.classifier.learning_rate=0.05",
             "--config.runtime.strategy=mirrored", "--config.runtime.logical_cpu_devices=2"]
    for cache in ("on", "off"):  # the last run's outputs are checked below
        result = subprocess.run([sys.executable, "-m", "cleannet_tf.cli.train_classifier", *flags,
                                 f"--config.classifier.frozen_cache={cache}"], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        metrics = json.load(open(os.path.join(workdir, "classifier", "metrics.json")))
        assert metrics["frozen_cache"] == (cache == "on") and all(np.isfinite(h["loss"]) for h in metrics["history"])
    assert metrics["mixed_precision"] and metrics["test_accuracy"] is not None
    assert all(np.isfinite(h["loss"]) for h in metrics["history"])
    saved = keras.saving.load_model(os.path.join(workdir, "classifier", "model.keras"))
    assert {layer.dtype_policy.name for layer in saved.get_layer("backbone").layers} == {"float32"}
    assert all(np.all(np.isfinite(w)) for w in saved.get_weights())
    initial = backbones.build_backbone("efficientnet_lite0", image_size=(32, 32),
                                       weights=config.classifier.initial_weights)
    assert not np.allclose(saved.get_layer("backbone").get_layer("block15_project_conv").get_weights()[0],
                           initial.get_layer("block15_project_conv").get_weights()[0])  # trained (after the
    # loss scale, 2^15 at first, came down through the skipped steps whose float16 gradients overflowed)


def test_weighted_fine_tunes_share_the_cache_and_honour_the_weights(image_workdir):
    config, workdir, table = image_workdir
    for weighting in ("none", "hard"):
        config.classifier.weighting = weighting
        runner.run_step("train_classifier", config, workdir, table=table)  # the step, with its DONE record
        directory = os.path.join(workdir, "classifier" if weighting == "none" else "classifier_hard")
        written = json.load(open(os.path.join(directory, "metrics.json")))
        assert written["weighting"] == weighting and 0.0 <= written["test_accuracy"] <= 1.0
        assert written["train_from"] == TRAIN_FROM and written["frozen_cache"]
        weights = classifier_weights(table, workdir, "hard") if weighting == "hard" else np.ones(len(table))
        holdout = finetune.holdout_mask(table, np.ones(len(table), bool), 0.2, config.seed)
        pool = (table.split != data_table.SPLIT_TEST) & ~holdout
        assert written["n_train"] == int(np.sum(weights[pool] > 0)) < (48 - 10 if weighting == "hard" else 99)
        # its DONE record (the weighted one counts as complete only once verify, written here by hand, has one)
        assert records.read_record(workdir, records.record_name("train_classifier", config))["outputs"]
    assert len(os.listdir(os.path.join(workdir, "frozen_cache"))) == 1  # one frozen part, one cache
    # model.keras is the whole classifier: it extracts features as model.weights=classifier does.
    model = keras.saving.load_model(os.path.join(workdir, "classifier_hard", "model.keras"))
    assert model.get_layer("backbone").output_shape == (None, 1280) or model.get_layer("backbone").outputs


def test_early_stopping_keeps_the_best_held_apart_epoch(image_workdir, tmp_path):
    config, workdir, table = image_workdir
    config.classifier.epochs, config.classifier.patience, config.classifier.learning_rate = 10, 2, 0.3
    model, metrics = _train(config, table, str(tmp_path / "early"), cache=True)
    accuracies = [h["val"]["accuracy"] for h in metrics["history"]]
    best = int(np.argmax(accuracies)) + 1  # the first best epoch
    assert metrics["best_epoch"] == best and metrics["best_holdout_accuracy"] == pytest.approx(max(accuracies))
    assert metrics["stopped_early"] and metrics["epochs_trained"] == best + 2 == len(accuracies) < 10
    # model.keras holds the best epoch's weights, kept in the checkpoint, not the last epoch's.
    checkpoint = tf.train.load_checkpoint(str(tmp_path / "early" / "classifier" / "checkpoints"))
    trained = block_cache.build_trained_part((1, 1, 320), "block11", 3)
    index = [w.path for w in trained.weights].index("logits/kernel")
    best_kernel = checkpoint.get_tensor(f"best/weights/{index}/.ATTRIBUTES/VARIABLE_VALUE")
    last_kernel = [checkpoint.get_tensor(name) for name, shape in checkpoint.get_variable_to_shape_map().items()
                   if name.startswith(("model/", "optimizer/_trainable_variables/")) and tuple(shape) == (1280, 3)]
    saved = keras.saving.load_model(str(tmp_path / "early" / "classifier" / "model.keras"))
    np.testing.assert_array_equal(saved.get_layer("logits").get_weights()[0], best_kernel)
    assert len(last_kernel) == 1 and not np.allclose(last_kernel[0], best_kernel)  # (saved once, under either)


def test_held_apart_loss_or_accuracy_picks_the_kept_epoch(image_workdir, tmp_path):
    """One training history (patience 0: the selection does not change training), kept epoch by each figure."""
    config, workdir, table = image_workdir
    config.classifier.epochs, config.classifier.learning_rate = 6, 0.001
    kept = {}
    for select_by in ("accuracy", "loss"):
        config.classifier.select_by = select_by
        model, metrics = _train(config, table, str(tmp_path / select_by), cache=True)
        kept[select_by] = (model, metrics)
    histories = [[(h["val"]["accuracy"], h["val"]["loss"]) for h in m["history"]] for _, m in kept.values()]
    assert histories[0] == histories[1] and len(histories[0]) == 6
    accuracies, losses = np.array(histories[0]).T
    by_accuracy, by_loss = kept["accuracy"][1], kept["loss"][1]
    assert by_accuracy["best_epoch"] == int(np.argmax(accuracies)) + 1 and by_accuracy["select_by"] == "accuracy"
    assert by_loss["best_epoch"] == int(np.argmin(losses)) + 1 and by_loss["select_by"] == "loss"
    assert by_loss["best_holdout_loss"] == pytest.approx(losses.min())
    assert by_loss["best_epoch"] != by_accuracy["best_epoch"]  # this history tells them apart
    logits = [m.get_layer("logits").get_weights()[0] for m, _ in kept.values()]
    assert not np.allclose(logits[0], logits[1])  # each kept its own epoch's model


def test_fine_tune_killed_mid_epoch_resumes_to_the_uninterrupted_result(image_workdir, tmp_path):
    config, workdir, table = image_workdir
    config.classifier.epochs, config.classifier.patience, config.classifier.weighting = 8, 3, "soft"
    flags = [f"--workdir={workdir}", "--config.data.format=tsv", f"--config.data.root={config.data.root}",
             "--config.model.backbone=efficientnet_lite0", "--config.model.weights=random",
             "--config.model.image_height=32", "--config.model.image_width=32", "--config.input.resize=squash",
             f"--config.classifier.initial_weights={config.classifier.initial_weights}",
             f"--config.classifier.train_from={TRAIN_FROM}",
             "--config.classifier.holdout_fraction=0.2", "--config.classifier.patience=3",
             "--config.classifier.mixed_precision=off", "--config.classifier.weighting=soft",
             "--config.classifier.epochs=8", "--config.classifier.batch_size=8",
             "--config.classifier.learning_rate=0.05", "--config.runtime.strategy=default"]
    checkpoints = os.path.join(workdir, "classifier_soft", "checkpoints")
    process = subprocess.Popen([sys.executable, "-m", "cleannet_tf.cli.train_classifier", *flags],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and process.poll() is None and not (
                os.path.isdir(checkpoints) and any(n.endswith(".index") for n in os.listdir(checkpoints))):
            time.sleep(0.01)
        time.sleep(0.3)  # into the next epoch
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the fine-tune finished before it could be killed"
    steps_per_epoch = (48 - 10) // 8
    last = int(tf.train.latest_checkpoint(checkpoints).rsplit("-", 1)[1])
    assert 0 < last < 8 * steps_per_epoch and not records.step_complete("train_classifier", config, workdir)

    resumed, uninterrupted, model_a, model_b = resume_then_run_clean(
        config, workdir, table, str(tmp_path / "clean"), last=last, steps_per_epoch=steps_per_epoch)
    for field in ("best_epoch", "epochs_trained", "steps_trained", "test_accuracy", "best_holdout_accuracy"):
        assert resumed[field] == uninterrupted[field], field
    _assert_same_weights(model_a, model_b, atol=1e-5)


@pytest.mark.slow
def test_multi_worker_fine_tune_two_processes_train_one_model(image_workdir, tmp_path):
    """Two worker processes (MultiWorkerMirroredStrategy on loopback) fine-tune from block 11 with held-apart rows:
    the same weights on both, the chief's model.keras and metrics.json; frozen_cache=auto is off across workers."""
    config, workdir, table = image_workdir
    config.runtime.strategy, config.classifier.epochs = "multi_worker", 2
    config = config_lib.validate(config)
    results = run_two_workers(config, workdir, tmp_path, "finetune")
    saved = keras.saving.load_model(os.path.join(workdir, "classifier", "model.keras"))
    for i, want in enumerate(saved.get_weights()):
        np.testing.assert_array_equal(results[0][f"arr_{i}"], results[1][f"arr_{i}"])
        np.testing.assert_allclose(results[0][f"arr_{i}"], want, atol=1e-6)
    metrics = json.load(open(os.path.join(workdir, "classifier", "metrics.json")))
    assert metrics["frozen_cache"] is False and metrics["n_holdout"] == 10
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    assert metrics["steps"] == 2 * ((48 - 10) // 8)
    assert not os.path.exists(os.path.join(workdir, "frozen_cache"))
    initial = backbones.build_backbone("efficientnet_lite0", image_size=(32, 32),
                                       weights=config.classifier.initial_weights)
    assert not np.array_equal(saved.get_layer("backbone").get_layer("head_conv").get_weights()[0],
                              initial.get_layer("head_conv").get_weights()[0])  # it trained


def test_config_rejects_what_cannot_be_cached_or_split():
    config = config_lib.default_config()
    config.data.root = "x.tsv"
    for field, value, message in (
            ("train_from", "block16", "must be one of"),
            ("train_from", "block3", "only model.backbone='efficientnet_lite0'"),
            ("frozen_cache", "on", "needs frozen layers"),
            ("holdout_fraction", 0.7, r"\[0, 0.5\]"),
            ("patience", 2, "needs held-apart rows")):
        bad = config.copy_and_resolve_references()
        bad.classifier[field] = value
        with pytest.raises(ValueError, match=f"config.classifier.{field}: .*{message}"):
            config_lib.validate(bad)
    bad = config.copy_and_resolve_references()
    bad.model.backbone, bad.classifier.train_from, bad.classifier.frozen_cache = "efficientnet_lite0", "head", "on"
    bad.input.augment = "flip_crop"
    with pytest.raises(ValueError, match="config.classifier.frozen_cache: caches the image and its mirror only"):
        config_lib.validate(bad)
    bad.input.augment = "flip"
    assert config_lib.validate(bad).classifier.train_from == "head"
    bad.runtime.strategy = "multi_worker"  # a host's files: not shared across workers
    with pytest.raises(ValueError, match="config.classifier.frozen_cache: caches on one host"):
        config_lib.validate(bad)
    bad.classifier.frozen_cache = "auto"
    assert not finetune.resolve_frozen_cache(config_lib.validate(bad))
    assert block_cache.TRAIN_FROM[1:17] == tuple(f"block{k}" for k in range(16))  # the names config.py accepts
