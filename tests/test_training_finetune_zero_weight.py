"""Rows of weight 0 are out of a fine-tune entirely (benchmarks/finetune_oof.py's folds rely on it): their labels
reach neither the gradient nor the held-apart accuracy that picks the epoch, so changing them changes nothing."""

import os

import numpy as np
import pytest
from conftest import stand_in_lite0_weights

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.training import finetune


@pytest.fixture
def fold_setup(tmp_path, make_images):
    """36 pool + 8 test 32x32 images of 3 classes, a config fine-tuning EfficientNet-Lite0 (random stand-in
    weights) from its head on, from a float32 cache, 1/4 of the pool held apart; a "fold" of 12 pool rows, half of
    them held-apart rows, half training rows."""
    paths = make_images(tmp_path / "data", 44, size=(32, 32))
    splits = ["train"] * 36 + ["test"] * 8
    lines = ["path\tlabel\tsplit"] + [f"{os.path.basename(p)}\tclass{i % 3}\t{splits[i]}" for i, p in enumerate(paths)]
    (tmp_path / "data" / "labels.tsv").write_text("\n".join(lines) + "\n")
    config = config_lib.default_config()
    config.data.format, config.data.root = "tsv", str(tmp_path / "data" / "labels.tsv")
    config.model.backbone, config.model.weights = "efficientnet_lite0", "random"
    config.model.image_height = config.model.image_width = 32
    config.input.resize = "squash"
    config.classifier.epochs, config.classifier.batch_size, config.classifier.learning_rate = 2, 8, 0.1
    config.classifier.initial_weights = stand_in_lite0_weights(str(tmp_path / "backbone.weights.h5"), 32)
    config.classifier.train_from, config.classifier.frozen_cache = "head", "on"
    config.classifier.holdout_fraction, config.classifier.patience = 0.25, 0
    config.classifier.mixed_precision = "off"
    config = config_lib.validate(config)
    table = load_table(config, str(tmp_path / "work"))
    holdout = finetune.holdout_mask(table, np.ones(len(table), bool), 0.25, config.seed)
    training = (table.split != data_table.SPLIT_TEST) & ~holdout
    fold = np.concatenate([np.nonzero(holdout)[0][:6], np.nonzero(training)[0][:6]])
    return config, table, fold


def _fine_tune(config, table, directory, weights):
    return finetune.train_finetune(table, config, str(directory), cache_dir=str(directory.parent / "cache"),
                                   sample_weights=weights, initial_weights=config.classifier.initial_weights,
                                   progress=False, cache_dtype="float32")


def _relabelled(table, rows):
    labels = table.labels.copy()
    labels[rows] = (labels[rows] + 1) % table.num_classes
    return data_table.LabelTable(**{**vars(table), "labels": labels})


def test_labels_of_zero_weight_rows_do_not_reach_the_model(fold_setup, tmp_path):
    config, table, fold = fold_setup
    weights = np.ones(len(table), np.float32)
    weights[fold] = 0.0
    model, metrics = _fine_tune(config, table, tmp_path / "fold", weights)
    relabelled, relabelled_metrics = _fine_tune(config, _relabelled(table, fold), tmp_path / "fold_relabelled",
                                                weights)
    assert metrics["n_train"] == relabelled_metrics["n_train"] == 36 - 9 - 6  # pool - held apart - training fold
    assert metrics["frozen_cache_key"] == relabelled_metrics["frozen_cache_key"]  # the second run read the cache
    assert metrics["best_epoch"] == relabelled_metrics["best_epoch"]
    for a, b in zip(model.get_weights(), relabelled.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # The control: with weight 1 the same relabelling does change the model.
    ones = np.ones(len(table), np.float32)
    plain, _ = _fine_tune(config, table, tmp_path / "all", ones)
    changed, _ = _fine_tune(config, _relabelled(table, fold), tmp_path / "all_relabelled", ones)
    assert not np.array_equal(plain.get_layer("logits").get_weights()[0], changed.get_layer("logits").get_weights()[0])
