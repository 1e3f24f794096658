"""Sanity guards (sanity.py) and the small-dataset BatchNorm default of the classifier."""

import json
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_digits

from cleannet_tf import config as config_lib
from cleannet_tf import sanity
from cleannet_tf.data import table as data_table
from cleannet_tf.features import backbones
from cleannet_tf.pipeline import records
from cleannet_tf.pipeline.classifier import run_train_classifier
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.training import classifier as classifier_training


def test_detection_warnings_name_what_is_missing():
    verification = np.array([1] * 80 + [0] * 20)  # flagging nothing errs on 20%
    weak = sanity.detection_warnings(detection_error=0.19, verification=verification)
    assert any("not clearly below the 20.0% of flagging nothing" in w for w in weak)
    assert any("only 80 verified-right and 20 verified-wrong" in w
               and "needs at least 30 of each kind: 10 more verified-wrong (" in w for w in weak)
    plenty = np.array([1] * 80 + [0] * 40)
    assert sanity.detection_warnings(detection_error=0.05, verification=plenty) == []
    assert len(sanity.detection_warnings(detection_error=0.30, verification=plenty)) == 1
    # The rows that chose the threshold (verified_train) are counted, not the evaluated ones.
    few_train = sanity.detection_warnings(detection_error=0.05, verification=plenty, threshold_counts=(50, 12),
                                          threshold_rows="verified_train of verified classes")
    assert len(few_train) == 1 and "only 50 verified-right and 12 verified-wrong labels (verified_train of " \
        "verified classes) choose the threshold" in few_train[0] and "18 more verified-wrong (verified_train.tsv" \
        in few_train[0]
    assert sanity.detection_warnings(detection_error=0.05, verification=verification,
                                     threshold_counts=(80, 40)) == []  # few val rows, enough train rows


def test_classifier_warnings_chance_and_short_epochs():
    labels = np.repeat(np.arange(6), 8)
    assert sanity.chance_accuracy(labels, 6) == 0.25  # 1.5 / C beats the majority share 1/6 + 0.05
    skewed = np.array([0] * 40 + [1] * 8)
    assert sanity.chance_accuracy(skewed, 2) > 0.88  # always guessing class 0 scores 0.83
    warnings = sanity.classifier_warnings(test_accuracy=0.19, test_labels=labels, num_classes=6,
                                          steps_per_epoch=4, epoch_size=264, batch_size=64)
    assert len(warnings) == 2
    assert "only 4 steps" in warnings[0] and "--config.classifier.batch_size=8" in warnings[0]
    assert "near chance" in warnings[1]
    assert sanity.suggested_batch_size(264) == 8 and 264 // 8 >= sanity.MIN_STEPS_PER_EPOCH
    assert sanity.classifier_warnings(test_accuracy=0.9, test_labels=labels, num_classes=6, steps_per_epoch=40,
                                      epoch_size=2560, batch_size=64) == []


def _digits_dataset(directory, *, classes=6, per_class=50):
    """300 real 8x8 digit images (scikit-learn's) at 32x32, 6 classes: the size of issue 15's dataset."""
    digits = load_digits()
    directory.mkdir(parents=True)
    lines = ["path\tlabel\tverified\tsplit"]
    for c in range(classes):
        for j, i in enumerate(np.nonzero(digits.target == c)[0][:per_class]):
            pixels = np.repeat((digits.images[i] * 16).clip(0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
            Image.fromarray(pixels).resize((32, 32)).save(directory / f"c{c}_{j}.png")
            split = "test" if j >= 42 else "val" if j >= 38 else "train"
            lines.append(f"c{c}_{j}.png\tclass{c}\t\t{split}")
    (directory / "labels.tsv").write_text("\n".join(lines) + "\n")
    config = config_lib.default_config()
    config.data.format, config.data.root = "tsv", str(directory / "labels.tsv")
    config.model.backbone, config.model.weights = "small_cnn", "random"
    config.model.image_height = config.model.image_width = 32
    config.input.resize = "squash"
    config.classifier.epochs, config.classifier.batch_size, config.classifier.initial_weights = 8, 64, "random"
    config.classifier.learning_rate = 0.05
    return config_lib.validate(config)


def test_tiny_dataset_no_longer_gives_a_chance_level_classifier(tmp_path):
    # Issue 15: 300 images, 6 classes, batch 64 -> 3-4 steps an epoch; BatchNorm's moving statistics never settle
    # and the classifier in inference mode was at chance (0.17-0.19) with no warning.
    config = _digits_dataset(tmp_path / "data")
    workdir = str(tmp_path / "work")
    table = load_table(config, workdir)
    metrics = run_train_classifier(config, workdir, table=table, progress=False)
    test = table.split == data_table.SPLIT_TEST
    chance = sanity.chance_accuracy(table.labels[test], table.num_classes)
    assert metrics["steps"] == 8 * 3  # 252 training images, batches of 64
    assert metrics["test_accuracy"] > 0.6 > chance  # recomputed statistics: well above chance
    assert len(metrics["warnings"]) == 1 and "an epoch is only 3 steps" in metrics["warnings"][0]
    written = json.load(open(os.path.join(workdir, "classifier", "metrics.json")))
    assert written["warnings"] == metrics["warnings"]
    assert records.recorded_warnings(config, workdir) == metrics["warnings"]  # what cleannet-run / demo print

    # The old behaviour: the last checkpoint holds the moving statistics as training left them (before the
    # recomputation); in inference mode that model is at chance, and the guard says so.
    backbone = backbones.build_backbone("small_cnn", image_size=(32, 32), weights="random")
    stale = backbones.build_classifier(backbone, table.num_classes)
    checkpoint = tf.train.latest_checkpoint(os.path.join(workdir, "classifier", "checkpoints"))
    tf.train.Checkpoint(model=stale).restore(checkpoint).assert_existing_objects_matched()
    accuracy = classifier_training.evaluate_accuracy(stale, table.paths[test], table.labels[test], image_size=(32, 32),
                                                config=config)
    assert accuracy < chance
    warnings = sanity.classifier_warnings(test_accuracy=accuracy, test_labels=table.labels[test], num_classes=6,
                                          steps_per_epoch=3, epoch_size=int((~test).sum()), batch_size=64)
    assert any("near chance" in w for w in warnings)
    # The saved model is the recomputed one: it scores as metrics.json says.
    saved = keras.saving.load_model(os.path.join(workdir, "classifier", "model.keras"))
    np.testing.assert_array_equal(saved.get_layer("logits").kernel, stale.get_layer("logits").kernel)  # same weights
    assert classifier_training.evaluate_accuracy(saved, table.paths[test], table.labels[test], image_size=(32, 32),
                                            config=config) == metrics["test_accuracy"]
