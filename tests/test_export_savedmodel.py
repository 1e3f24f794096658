"""SavedModel export (cleannet_tf/export/savedmodel.py): what the archives hold, one version per publication, no
litter after a failure or a kill."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from serving_helpers import CLASS_NAMES, IMAGE_SIZE, _models
from tensorflow_serving.apis import (
    prediction_log_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from cleannet_tf.export import savedmodel
from cleannet_tf.export.names import CLASSIFIER, VERIFIER, WARMUP_FILE
from cleannet_tf.serving.signatures import replay_warmup


def test_keras_model_and_savedmodel_agree(served, tmp_path):
    _, model, _ = served["models"]
    path = str(tmp_path / "verifier.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    saved = tf.saved_model.load(os.path.join(served["export_dir"], VERIFIER, "1"))
    raw = np.abs(np.random.default_rng(4).normal(size=(3, 16))).astype(np.float32)
    labels = np.array([2, 0, 1], np.int64)
    a = reloaded({"features": raw, "label": labels})
    b = saved.signatures["verify_features"](features=tf.constant(raw), label=tf.constant(labels))
    for name in ("score", "weight_soft"):
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)


def test_warmup_records_parse_and_succeed(served):
    for model in (VERIFIER, CLASSIFIER):
        version_dir = os.path.join(served["export_dir"], model, "1")
        servable = served["server"].manager.get(model, version=1)
        kinds = []
        for record in tf.data.TFRecordDataset(os.path.join(version_dir, WARMUP_FILE)):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            kinds.append(log.WhichOneof("log_type"))
            replay_warmup(servable, record.numpy())
        expected = {VERIFIER: 4, CLASSIFIER: 2}[model]
        assert len(kinds) == expected and set(kinds) <= {"predict_log", "classify_log"}


def test_models_config_parses_with_the_serving_protos(served):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(open(os.path.join(served["export_dir"], "models.config")).read(), config)
    entries = {c.name: c for c in config.model_config_list.config}
    assert set(entries) == {VERIFIER, CLASSIFIER}
    for name, entry in entries.items():
        assert entry.base_path == os.path.join(served["export_dir"], name) and entry.model_platform == "tensorflow"


def test_no_xla_functions_in_the_savedmodels(served):
    from tensorflow.core.protobuf import saved_model_pb2

    for model in (VERIFIER, CLASSIFIER):
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(open(os.path.join(served["export_dir"], model, "1", "saved_model.pb"), "rb").read())
        for function in proto.meta_graphs[0].graph_def.library.function:
            assert not function.attr["_XlaMustCompile"].b, function.signature.name


def test_failed_publication_leaves_no_version(tmp_path):
    backbone, model, classifier = _models()
    archive = savedmodel.build_verifier_archive(model, backbone, CLASS_NAMES, image_size=IMAGE_SIZE, resize="squash")
    base = str(tmp_path / VERIFIER)
    with pytest.raises(TypeError):
        savedmodel.publish(archive, base, class_names=CLASS_NAMES, warmup=[object()])  # fails after write_out
    assert os.listdir(base) == [] and savedmodel.next_version(base) == 1


def test_the_exported_graphs_check_inputs_themselves(served):
    """What tensorflow_model_server (no cleannet code) gets: the checks live in the SavedModel's graph."""
    saved = tf.saved_model.load(os.path.join(served["export_dir"], VERIFIER, "1"))
    features = np.ones((1, 16), np.float32)
    features[0, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="features must be finite"):
        saved.signatures["verify_features"](features=tf.constant(features), label=tf.constant([0], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"unknown class \\?'nope\\?'; known: class_0, "
                                                             "class_1, class_2, class_3"):
        saved.signatures["verify_label_name"](image_bytes=tf.constant(served["images"][:1]),
                                              label_name=tf.constant(["class_1", "nope"][1:]))
    got = saved.signatures["verify_label_name"](image_bytes=tf.constant(served["images"][:2]),
                                                label_name=tf.constant(["class_1", "class_2"]))
    assert [CLASS_NAMES[i] for i in got["suggested_label"].numpy()] == [
        n.decode() for n in got["suggested_label_name"].numpy()]


def test_both_models_get_one_version_above_both_maxima(tmp_path):
    backbone, model, classifier = _models()
    export_dir = tmp_path / "saved_models"
    for version in (1, 2, 3):
        (export_dir / VERIFIER / str(version)).mkdir(parents=True)
    (export_dir / CLASSIFIER / "1").mkdir(parents=True)
    paths = savedmodel.publish_models(str(export_dir), {
        VERIFIER: (savedmodel.build_verifier_archive(model, backbone, CLASS_NAMES, image_size=IMAGE_SIZE,
                                                                resize="squash"), []),
        CLASSIFIER: (savedmodel.build_classifier_archive(classifier, CLASS_NAMES, image_size=IMAGE_SIZE,
                                                                    resize="squash"), [])}, class_names=CLASS_NAMES)
    assert paths == {name: str(export_dir / name / "4") for name in (VERIFIER, CLASSIFIER)}
    assert os.path.exists(export_dir / "models.config")


_KILLED_EXPORT = r"""
import sys, time
import keras
from cleannet_tf.export import savedmodel
from cleannet_tf.features import backbones

class Stall:  # the warmup records: iterating them never ends, so the export is caught half-way
    def __iter__(self):
        print("WRITING", flush=True)
        while True:
            time.sleep(1)
            yield b""

backbone = backbones.build_backbone("small_cnn", image_size=(32, 32), weights="random", feature_dim=16)
archive = savedmodel.build_classifier_archive(backbones.build_classifier(backbone, 2), ["a", "b"],
                                              image_size=(32, 32), resize="squash")
savedmodel.publish(archive, sys.argv[1], class_names=["a", "b"], warmup=Stall())
"""


def test_a_killed_exports_temporary_folder_is_removed_by_the_next_export(tmp_path):
    base = tmp_path / CLASSIFIER
    process = subprocess.Popen([sys.executable, "-c", _KILLED_EXPORT, str(base)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        assert process.stdout.readline().strip() == "WRITING"
    finally:
        process.kill()  # SIGKILL: no cleanup runs
        process.wait()
    killed = base / f".tmp-1-{process.pid}"
    assert (killed / "saved_model.pb").exists()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        running = base / f".tmp-7-{alive.pid}"  # an export still running: left alone
        running.mkdir()
        _, _, classifier = _models()
        path = savedmodel.publish(savedmodel.build_classifier_archive(classifier, CLASS_NAMES, image_size=IMAGE_SIZE,
                                                                      resize="squash"), str(base),
                                  class_names=CLASS_NAMES, warmup=[])
        assert sorted(os.listdir(base)) == sorted([os.path.basename(path), running.name])
    finally:
        alive.kill()
        alive.wait()
