"""cleannet-export: the verifier and the classifier of a WORKDIR as SavedModels under EXPORT_DIR/<name>/<version>/.

Imports `data`, `export`, `pipeline.artifacts`.
"""

from __future__ import annotations

import os

import keras
import ml_collections
import numpy as np
from absl import logging

from cleannet_tf.data import images as data_images
from cleannet_tf.data import table as data_table
from cleannet_tf.export.names import CLASSIFIER, VERIFIER
from cleannet_tf.export.savedmodel import (
    build_classifier_archive,
    build_verifier_archive,
    example_of,
    publish_models,
    warmup_records,
)
from cleannet_tf.pipeline.artifacts import build_config_backbone, classifier_path, load_verifier, open_features
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import verifier_path


def _sample_inputs(table: data_table.LabelTable, features: np.ndarray, count: int = 2):
    rows = np.nonzero(table.split != data_table.SPLIT_TEST)[0][:count]
    images = np.array([open(path, "rb").read() for path in table.paths[rows]], dtype=object)
    return images, table.labels[rows].astype(np.int64), np.asarray(table.class_names)[table.labels[rows]], rows


def export_all(config: ml_collections.ConfigDict, workdir: str, export_dir: str, *,
               table: data_table.LabelTable | None = None,
               max_pixels: int = data_images.DEFAULT_MAX_PIXELS) -> dict:
    """cleannet-export: both models as new versions (one number for both) under export_dir, and models.config.

    max_pixels: the image pixel limit baked into both graphs. Returns their paths.
    """
    table = table if table is not None else load_table(config, workdir)
    verifier, class_names, threshold = load_verifier(workdir)
    if list(class_names) != list(table.class_names):
        raise ValueError(f"{verifier_path(workdir)} was made for other classes: rerun cleannet-verify.")
    image_size, resize = (config.model.image_height, config.model.image_width), config.input.resize
    backbone = build_config_backbone(config, workdir)
    features = open_features(config, workdir, table)
    images, labels, label_names, rows = _sample_inputs(table, features)
    sample_features = features.gather(rows)

    classifier = keras.saving.load_model(classifier_path(config, workdir))
    paths = publish_models(export_dir, {
        VERIFIER: (build_verifier_archive(verifier, backbone, class_names, image_size=image_size, resize=resize,
                                          max_pixels=max_pixels),
                   warmup_records(VERIFIER, {
                       "serving_default": {"image_bytes": images, "label": labels},
                       "verify_label_name": {"image_bytes": images, "label_name": label_names},
                       "verify_features": {"features": sample_features, "label": labels},
                       "embed": {"image_bytes": images}})),
        CLASSIFIER: (build_classifier_archive(classifier, class_names, image_size=image_size, resize=resize,
                                              max_pixels=max_pixels),
                     warmup_records(CLASSIFIER, {
                         "serving_default": {"image_bytes": images},
                         "classify": {"inputs": [example_of(image) for image in images]}}))},
        class_names=class_names)
    verifier_dir, classifier_dir = paths[VERIFIER], paths[CLASSIFIER]
    config_path = os.path.join(export_dir, "models.config")
    logging.info("Exported %s and %s (threshold %.4f); %s", verifier_dir, classifier_dir, threshold, config_path)
    return {"verifier": verifier_dir, "classifier": classifier_dir, "models_config": config_path,
            "threshold": threshold}
