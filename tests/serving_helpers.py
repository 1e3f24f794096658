"""Shared by the serving and export tests: small verifier and classifier models published as SavedModels
(conftest's `served` fixture serves them on loopback), and request helpers."""

import json
import os

import keras
import numpy as np
import pytest

from cleannet_tf.detection import signals, verifier
from cleannet_tf.export import savedmodel
from cleannet_tf.export.names import CLASSIFIER, VERIFIER
from cleannet_tf.features import backbones
from cleannet_tf.model.cleannet import build_cleannet, encode_classes

IMAGE_SIZE = (32, 32)
CLASS_NAMES = [f"class_{c}" for c in range(4)]
CALIBRATION = (0.45, -0.3)  # Platt (a, b) of the verifier: weight_soft = sigmoid(a logit + b)


def _models(threshold=0.1, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = backbones.build_backbone("small_cnn", image_size=IMAGE_SIZE, weights="random", feature_dim=16)
    cleannet = build_cleannet(feature_dim=16, num_references=3, query_hidden_dim=8, reference_hidden_dim=8,
                              attention_dim=4, embed_dim=6)
    rng = np.random.default_rng(seed)
    class_embeddings = encode_classes(cleannet, rng.gamma(1.0, 1.0, (4, 3, 16)).astype(np.float32)).numpy()
    model = verifier.build_verifier(cleannet, class_embeddings, signals.log_normalize(rng.gamma(1, 1, (4, 16))),
                                    scoring="stacked", threshold=threshold, signal_weights=(1.0, 2.0, 3.0, 4.0),
                                    signal_bias=-1.0, calibration=CALIBRATION)
    classifier = backbones.build_classifier(backbone, len(CLASS_NAMES))
    return backbone, model, classifier


def _publish(export_dir, images, threshold=0.1, seed=0, version=None):
    backbone, model, classifier = _models(threshold, seed)
    labels = np.array([0, 3], np.int64)
    features = np.abs(np.random.default_rng(1).normal(size=(2, 16))).astype(np.float32)
    image_bytes = np.array(images[:2], dtype=object)
    savedmodel.publish(
        savedmodel.build_verifier_archive(model, backbone, CLASS_NAMES, image_size=IMAGE_SIZE, resize="squash"),
        os.path.join(export_dir, VERIFIER), class_names=CLASS_NAMES, version=version,
        warmup=savedmodel.warmup_records(VERIFIER, {
            "serving_default": {"image_bytes": image_bytes, "label": labels},
            "verify_label_name": {"image_bytes": image_bytes, "label_name": np.array([b"class_0", b"class_3"],
                                                                                     dtype=object)},
            "verify_features": {"features": features, "label": labels},
            "embed": {"image_bytes": image_bytes}}))
    savedmodel.publish(
        savedmodel.build_classifier_archive(classifier, CLASS_NAMES, image_size=IMAGE_SIZE, resize="squash", top_k=2),
        os.path.join(export_dir, CLASSIFIER), class_names=CLASS_NAMES, version=version,
        warmup=savedmodel.warmup_records(CLASSIFIER, {
            "serving_default": {"image_bytes": image_bytes},
            "classify": {"inputs": [savedmodel.example_of(b) for b in images[:2]]}}))
    savedmodel.write_models_config(export_dir)
    return backbone, model, classifier


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_post(url, body: bytes, headers=None):
    """(HTTP status, parsed JSON body) of a POST with exactly these bytes (json.loads must accept the answer)."""
    import http.client
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("POST", parts.path)
        for name, value in {"Content-Length": str(len(body)), "Content-Type": "application/json",
                            **(headers or {})}.items():
            connection.putheader(name, value)
        connection.endheaders()
        if "Content-Length" not in (headers or {}):
            connection.send(body)
        response = connection.getresponse()
        text = response.read().decode()
        return response.status, json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text}"))
    finally:
        connection.close()
