"""SavedModel export and the TF Serving-compatible server, over real gRPC on loopback with the official stubs."""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    prediction_log_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from cleannet_tf.data import images as data_images
from cleannet_tf.detection import calibration as calibration_lib
from cleannet_tf.detection import signals, verifier
from cleannet_tf.export import savedmodel
from cleannet_tf.export.names import CLASSIFIER, VERIFIER, WARMUP_FILE
from cleannet_tf.features import backbones
from cleannet_tf.model.cleannet import build_cleannet, encode_classes
from cleannet_tf.serving import Client, start_server
from cleannet_tf.serving.signatures import replay_warmup
from cleannet_tf.serving.tensor_proto import to_tensor_proto

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


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    images = []
    for i in range(5):
        path = root / f"img{i}.{'png' if i == 4 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
        images.append(path.read_bytes())
    export_dir = str(root / "saved_models")
    models = _publish(export_dir, images)
    server = start_server(model_config_file=os.path.join(export_dir, "models.config"), port=0, rest_port=0,
                          poll_seconds=0.2)
    client = Client(f"127.0.0.1:{server.port}")
    yield {"export_dir": export_dir, "images": images, "models": models, "server": server, "client": client}
    client.close()
    server.stop(grace=1)


def _in_process_image_features(backbone, images):
    batch = tf.stack([data_images.decode_image(tf.constant(b), IMAGE_SIZE, "squash") for b in images])
    return backbone(batch, training=False)["features"]


def test_every_signature_matches_the_in_process_model(served):
    client, images = served["client"], served["images"]
    backbone, model, classifier = served["models"]
    labels = np.array([0, 1, 2, 3, 1], np.int64)
    features = _in_process_image_features(backbone, images)
    expected = model({"features": features, "label": tf.constant(labels)})
    for got in (client.verify_image(images, labels.tolist()),
                client.verify_image(images, [CLASS_NAMES[i] for i in labels])):
        for name in ("score", "weight_soft", "suggested_score"):
            np.testing.assert_allclose(got[name], expected[name], atol=1e-5)
        np.testing.assert_array_equal(got["is_noisy"], expected["is_noisy"])
        np.testing.assert_array_equal(got["suggested_label"], expected["suggested_label"])
        # The served weight_soft is the calibrated P(label correct) of scores.tsv, not clip(score, 0, 1).
        np.testing.assert_allclose(got["weight_soft"], calibration_lib.correct_probability(
            got["score"], scoring="stacked", calibration=CALIBRATION), atol=1e-6)
    raw = np.abs(np.random.default_rng(3).normal(size=(7, 16))).astype(np.float32)  # batch 7: dynamic
    got = client.verify_features(raw, [0, 1, 2, 3, 0, 1, 2])
    np.testing.assert_allclose(got["score"], model({"features": raw, "label": np.array([0, 1, 2, 3, 0, 1, 2])})[
        "score"], atol=1e-5)
    np.testing.assert_allclose(client.embed_image(images[:1]), model.get_layer("query_encoder")(
        features[:1])["query_embedding"], atol=1e-5)
    probabilities = classifier(tf.stack([data_images.decode_image(tf.constant(b), IMAGE_SIZE, "squash")
                                         for b in images]))["probabilities"].numpy()
    predicted = client.predict(CLASSIFIER, {"image_bytes": np.array(images, dtype=object)})
    np.testing.assert_allclose(predicted["probabilities"], probabilities, atol=1e-5)
    np.testing.assert_array_equal(predicted["top_k"][:, 0], probabilities.argmax(axis=1))
    classified = client.classify_image(images, top=4)
    for row, probs in zip(classified, probabilities, strict=True):
        assert [name for name, _ in row][0] == CLASS_NAMES[int(probs.argmax())]
        np.testing.assert_allclose(sorted(s for _, s in row), sorted(probs), atol=1e-5)


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


def test_metadata_lists_every_signature_and_status(served):
    signatures = served["client"].signatures(VERIFIER)
    assert {"serving_default", "verify_label_name", "verify_features", "embed"} <= set(signatures)
    assert set(signatures["serving_default"].inputs) == {"image_bytes", "label"}
    assert signatures["verify_features"].inputs["features"].tensor_shape.dim[0].size == -1  # dynamic batch
    assert {"classify", "serving_default"} <= set(served["client"].signatures(CLASSIFIER))
    stub = model_service_pb2_grpc.ModelServiceStub(served["client"].channel)
    status = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
        model_spec=model_pb2.ModelSpec(name=VERIFIER)))
    assert [(s.version, s.state) for s in status.model_version_status][-1][1] == 30  # AVAILABLE
    with pytest.raises(grpc.RpcError) as error:
        stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name="nope")))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_bad_requests_get_tf_servings_status_codes_and_the_server_keeps_serving(served):
    client, images = served["client"], served["images"]
    cases = [
        (lambda: client.predict("nope", {"label": np.zeros(1, np.int64)}), grpc.StatusCode.NOT_FOUND),
        (lambda: client.verify_features(np.zeros((1, 16)), [0], version=99), grpc.StatusCode.NOT_FOUND),
        (lambda: client.predict(VERIFIER, {"label": np.zeros(1, np.int64)}, signature="nope"),
         grpc.StatusCode.FAILED_PRECONDITION),
        (lambda: client.predict(VERIFIER, {"label": np.zeros(1, np.int64)}),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.verify_features(np.zeros((1, 5)), [0]), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.verify_image(b"these are not image bytes", 0), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.verify_image(images[0], 17), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: client.verify_image(images[0], "not_a_class"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == code, error.value.details()
    assert client.verify_image(images[0], 1)["score"].shape == (1,)  # still serving


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


def test_rest_api_in_tf_servings_json_format(served):
    from cleannet_tf.serving.server import ModelServer

    server, images = served["server"], served["images"]
    http = ModelServer(server.manager, port=0, rest_port=_free_port())  # REST on the same models
    threading.Thread(target=http.rest_server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{http.rest_port}/v1/models/{VERIFIER}"
        rows = {"instances": [{"image_bytes": {"b64": base64.b64encode(images[0]).decode()}, "label": 2}]}
        got = _post(base + ":predict", rows)
        grpc_score = served["client"].verify_image(images[0], 2)["score"][0]
        assert abs(got["predictions"][0]["score"] - grpc_score) < 1e-5
        columns = {"signature_name": "verify_features", "inputs": {"features": [[0.5] * 16], "label": [1]}}
        assert len(_post(base + "/versions/1:predict", columns)["outputs"]["score"]) == 1
        status = json.load(urllib.request.urlopen(base))
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
        metadata = json.load(urllib.request.urlopen(base + "/metadata"))
        assert "verify_features" in metadata["metadata"]["signature_def"]["signatureDef"]
        with pytest.raises(urllib.error.HTTPError) as error:
            _post(base + ":predict", {"instances": [{"image_bytes": {"b64": "bm90IGFuIGltYWdl"}, "label": 0}]})
        assert error.value.code == 400 and "error" in json.loads(error.value.read())
    finally:
        http.rest_server.shutdown()
        http.grpc_server.stop(0)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))


def test_new_version_is_picked_up_during_a_stream_of_requests(served):
    client, images = served["client"], served["images"]
    failures, versions, stop = [], set(), threading.Event()
    request = np.abs(np.random.default_rng(5).normal(size=(1, 16))).astype(np.float32)

    def stream():
        from tensorflow_serving.apis import predict_pb2

        while not stop.is_set():
            message = predict_pb2.PredictRequest()
            message.model_spec.name, message.model_spec.signature_name = VERIFIER, "verify_features"
            message.inputs["features"].CopyFrom(tf.make_tensor_proto(request))
            message.inputs["label"].CopyFrom(tf.make_tensor_proto(np.array([1], np.int64)))
            try:
                versions.add(client.stub.Predict(message, timeout=10).model_spec.version.value)
            except grpc.RpcError as error:
                failures.append(error.code())

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.5)
    _publish(served["export_dir"], images, threshold=0.5, seed=1, version=2)
    deadline = time.time() + 60
    while 2 not in versions and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    thread.join()
    assert not failures and versions == {1, 2}


def test_failed_publication_leaves_no_version(tmp_path):
    backbone, model, classifier = _models()
    archive = savedmodel.build_verifier_archive(model, backbone, CLASS_NAMES, image_size=IMAGE_SIZE, resize="squash")
    base = str(tmp_path / VERIFIER)
    with pytest.raises(TypeError):
        savedmodel.publish(archive, base, class_names=CLASS_NAMES, warmup=[object()])  # fails after write_out
    assert os.listdir(base) == [] and savedmodel.next_version(base) == 1


def start_serve_process(served, *flags: str) -> tuple[subprocess.Popen, int]:
    """`python -m cleannet_tf.cli.serve` on served's models.config, gRPC on a free port: (process, that port)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cleannet_tf.cli.serve", f"--model_config_file={served['export_dir']}/models.config",
         "--port=0", *flags, "--tensorflow_intra_op_parallelism=1"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    line = ""
    deadline = time.time() + 120
    while "READY" not in line and time.time() < deadline and process.poll() is None:
        line = process.stdout.readline()
    if "grpc=" not in line:
        process.kill()
        raise AssertionError(f"cleannet-serve did not start (exit status {process.poll()}): {line!r}")
    return process, int(line.split("grpc=")[1].split()[0])


@pytest.mark.slow
def test_serve_command_shuts_down_gracefully_on_sigterm(served):
    process, port = start_serve_process(served)
    try:
        with Client(f"127.0.0.1:{port}") as client:
            assert client.verify_features(np.ones((1, 16)), [0])["score"].shape == (1,)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, -2], np.int64), np.array([True, False]),
    np.zeros((0, 5), np.float32), np.float32(3.5), np.arange(6, dtype=np.int32).reshape(2, 3).T,
    np.array([b"ab", b"c"], dtype=object)])
def test_tensor_proto_round_trips_like_tensorflows(value):
    proto = to_tensor_proto(value)
    back = tf.make_ndarray(proto)
    assert back.dtype == np.asarray(value).dtype and back.shape == np.shape(value)
    np.testing.assert_array_equal(back, value)
    np.testing.assert_array_equal(back, tf.make_ndarray(tf.make_tensor_proto(value)))


# ----------------------------------------------------------------------------- bad and half-written versions

class _RequestStream:
    """verify_features requests in a loop on a thread: the versions that answered and the failures."""

    def __init__(self, client):
        self.client, self.versions, self.failures, self.count = client, set(), [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        from tensorflow_serving.apis import predict_pb2

        features = np.abs(np.random.default_rng(5).normal(size=(1, 16))).astype(np.float32)
        while not self._stop.is_set():
            message = predict_pb2.PredictRequest()
            message.model_spec.name, message.model_spec.signature_name = VERIFIER, "verify_features"
            message.inputs["features"].CopyFrom(tf.make_tensor_proto(features))
            message.inputs["label"].CopyFrom(tf.make_tensor_proto(np.array([1], np.int64)))
            try:
                self.versions.add(self.client.stub.Predict(message, timeout=10).model_spec.version.value)
            except grpc.RpcError as error:
                self.failures.append((error.code(), error.details()))
            self.count += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def wait_for(self, version, seconds=60):
        deadline = time.time() + seconds
        while version not in self.versions and time.time() < deadline:
            time.sleep(0.1)
        return version in self.versions


def _status(client, name=VERIFIER):
    stub = model_service_pb2_grpc.ModelServiceStub(client.channel)
    response = stub.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(
        name=name)))
    return {s.version: (s.state, s.status.error_code, s.status.error_message) for s in response.model_version_status}


def _wait(condition, seconds=60):
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    return condition()


def test_a_corrupt_new_version_never_takes_the_model_offline(served, tmp_path):
    import shutil

    good = os.path.join(served["export_dir"], VERIFIER, "1")
    base = tmp_path / VERIFIER
    shutil.copytree(good, base / "1")
    server = start_server(model_name=VERIFIER, model_base_path=str(base), port=0, poll_seconds=0.2)
    client = Client(f"127.0.0.1:{server.port}")
    try:
        with _RequestStream(client) as stream:
            assert stream.wait_for(1)
            shutil.copytree(good, base / ".tmp-2")
            (base / ".tmp-2" / "saved_model.pb").write_bytes(b"\x08\x01 this is not a SavedModel proto")
            os.rename(base / ".tmp-2", base / "2")  # published atomically, but broken
            assert _wait(lambda: 2 in _status(client))
            time.sleep(2.0)  # retried meanwhile, with backoff
            assert not stream.failures and stream.versions == {1}
            status = _status(client)
            assert status[1] == (30, 0, "")  # AVAILABLE, OK
            state, code, message = status[2]
            assert state == 50 and code == grpc.StatusCode.DATA_LOSS.value[0] and "parse" in message.lower()
            failure = server.manager._failures[(VERIFIER, 2)]
            assert 2 <= failure.attempts <= 7, failure  # 0.2 s doubling: ~5 attempts in 2 s, not 10 polls
            rest = _rest_status(server)
            assert rest[1]["state"] == "AVAILABLE" and rest[0]["status"]["error_code"] == "DATA_LOSS"
            # The broken file is replaced (atomically): retried at once, and served.
            shutil.copy(os.path.join(good, "saved_model.pb"), tmp_path / "pb")
            os.replace(tmp_path / "pb", base / "2" / "saved_model.pb")
            assert stream.wait_for(2)
            # And a further good version is picked up as before.
            shutil.copytree(good, base / ".tmp-3")
            os.rename(base / ".tmp-3", base / "3")
            assert stream.wait_for(3)
            time.sleep(0.3)
        assert not stream.failures and stream.versions == {1, 2, 3} and stream.count > 20
        assert _status(client)[2][:2] == (50, 0) and _status(client)[3] == (30, 0, "")  # 2 unloaded cleanly
    finally:
        client.close()
        server.stop(grace=1)


def _rest_status(server):
    """GET /v1/models/NAME over REST on the same manager: model_version_status, newest first."""
    from cleannet_tf.serving.server import ModelServer

    http = ModelServer(server.manager, port=0, rest_port=_free_port())
    threading.Thread(target=http.rest_server.serve_forever, daemon=True).start()
    try:
        rows = json.load(urllib.request.urlopen(f"http://127.0.0.1:{http.rest_port}/v1/models/"
                                                f"{VERIFIER}"))["model_version_status"]
    finally:
        http.rest_server.shutdown()
        http.grpc_server.stop(0)
    return sorted(rows, key=lambda row: -int(row["version"]))


def test_a_version_copied_in_slowly_is_loaded_only_when_complete(served, tmp_path):
    """A plain copy straight into the base path, saved_model.pb first, with a poll after every write."""
    import shutil

    from cleannet_tf.serving import ModelManager, ModelSpecConfig
    from cleannet_tf.serving.server import ModelServer

    good = os.path.join(served["export_dir"], VERIFIER, "1")
    base = tmp_path / VERIFIER
    shutil.copytree(good, base / "1")
    manager = ModelManager([ModelSpecConfig(VERIFIER, str(base))], warmup_runner=replay_warmup,
                           poll_seconds=0.1)
    server = ModelServer(manager, port=0)
    server.grpc_server.start()  # no poller thread: this test polls (manager.refresh) itself
    client = Client(f"127.0.0.1:{server.port}")
    try:
        target = base / "2"
        files = sorted((os.path.relpath(os.path.join(root, f), good) for root, _, names in os.walk(good)
                        for f in names), key=lambda f: f != "saved_model.pb")
        polls = 0
        for relative in files:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            data = open(os.path.join(good, relative), "rb").read()
            step = max(len(data) // 3, 1)
            with open(target / relative, "wb") as f:
                for start in range(0, max(len(data), 1), step):
                    f.write(data[start:start + step])
                    f.flush()
                    manager.refresh()
                    polls += 1
                    assert 2 not in _status(client)  # never tried while it was being written
                    assert client.verify_features(np.ones((1, 16)), [0])["score"].shape == (1,)
        assert polls >= 12
        manager.refresh()  # unchanged since the poll after the last write: stable, loaded
        assert _status(client)[2] == (30, 0, "")
        assert client.predict(VERIFIER, {"features": np.ones((1, 16), np.float32),
                                                    "label": np.array([0])}, signature="verify_features",
                              version=2)["score"].shape == (1,)
    finally:
        client.close()
        server.grpc_server.stop(0)


# ----------------------------------------------------------------------------- inputs checked like TF Serving

def _details(call, code=grpc.StatusCode.INVALID_ARGUMENT):
    with pytest.raises(grpc.RpcError) as error:
        call()
    assert error.value.code() == code, error.value.details()
    return error.value.details()


def test_dtype_mismatches_and_non_finite_features_are_invalid_argument_over_grpc(served):
    client, images = served["client"], served["images"]
    image = np.array(images[:1], dtype=object)
    for label in (np.array([5.7]), np.array([-0.9], np.float32), np.array([1], np.int32)):
        details = _details(lambda label=label: client.predict(VERIFIER, {"image_bytes": image,
                                                                                    "label": label}))
        assert details == f"Expects arg 'label' to be int64 but {tf.as_dtype(label.dtype).name} is provided"
    details = _details(lambda: client.predict(VERIFIER, {
        "features": np.ones((1, 16), np.int32), "label": np.array([1])}, signature="verify_features"))
    assert details == "Expects arg 'features' to be float32 but int32 is provided"
    for bad in (np.nan, np.inf, -np.inf):
        features = np.ones((2, 16), np.float32)
        features[1, 3] = bad
        assert "NaN or Inf" in _details(lambda features=features: client.verify_features(features, [0, 1]))
    assert client.verify_features(np.ones((1, 16)), [0])["score"].shape == (1,)  # still serving


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


def test_suggested_label_name_and_a_plain_error_for_an_unknown_name(served):
    client, images = served["client"], served["images"]
    for got in (client.verify_image(images, [0, 1, 2, 3, 0]), client.verify_image(images, ["class_1"] * 5),
                client.verify_features(np.ones((2, 16)), [0, 1])):
        assert [n.decode() for n in got["suggested_label_name"]] == [CLASS_NAMES[i] for i in got["suggested_label"]]
        assert {"score", "is_noisy", "weight_soft", "suggested_label", "suggested_score"} <= set(got)
    details = _details(lambda: client.verify_image(images[:2], ["class_0", "ramen"]))
    assert details == "unknown class 'ramen'; known: class_0, class_1, class_2, class_3"
    signature = client.signatures(VERIFIER)["serving_default"]
    assert "suggested_label_name" in signature.outputs


@pytest.fixture(scope="module")
def rest_url(served):
    from cleannet_tf.serving.server import ModelServer

    http = ModelServer(served["server"].manager, port=0, rest_port=_free_port())
    threading.Thread(target=http.rest_server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.rest_port}/v1/models/{VERIFIER}"
    http.rest_server.shutdown()
    http.grpc_server.stop(0)


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


def test_every_rest_body_gets_a_json_answer(served, rest_url):
    predict = rest_url + ":predict"
    b64 = base64.b64encode(served["images"][0]).decode()

    def features_body(first: bytes) -> bytes:
        return (b'{"signature_name": "verify_features", "inputs": {"features": [[' + first + b", 1" * 15
                + b']], "label": [1]}}')

    bodies = {
        b"[1]": 400, b"null": 400, b'"a bare string"': 400, b"42": 400, b"[" * 100_000 + b"]" * 100_000: 400,
        b"{" * 100_000: 400, b'{"instances": [1, 2}': 400, b"\xff\xfe\x00{": 400, b'{"instances": {"a": 1}}': 400,
        b'{"instances": [{"image_bytes": {"b64": "%s"}, "label": 5.7}]}' % b64.encode(): 400,
        b'{"instances": [{"image_bytes": {"b64": "%s"}, "label": -0.9}]}' % b64.encode(): 400,
        b'{"instances": [{"image_bytes": {"b64": "%s"}, "label": true}]}' % b64.encode(): 400,
        b'{"instances": [{"image_bytes": {"b64": "%s"}, "label": 1}, {"label": 1}]}' % b64.encode(): 400,
        b'{"instances": [{"image_bytes": {"b64": "@@not b64@@"}, "label": 1}]}': 400,
        features_body(b"NaN"): 400, features_body(b"Infinity"): 400, features_body(b"-Infinity"): 400,
        features_body(b'"a"'): 400, features_body(b"1e999"): 400,
        b'{"signature_name": "verify_features", "inputs": {"features": [[1, 2], [3]], "label": [1]}}': 400,
        b'{"signature_name": ["x"], "instances": []}': 400,
        b'{"signature_name": "nope", "instances": []}': 400,
    }
    for body, status in bodies.items():
        got_status, got = _raw_post(predict, body)
        assert got_status == status and isinstance(got.get("error"), str) and got["error"], (body[:80], got)
    status, got = _raw_post(predict, b"{}", headers={"Content-Length": str(1 << 40)})  # a huge body, not read
    assert status == 413 and "over the limit" in got["error"]
    status, got = _raw_post(rest_url + ":classify", b'{"examples": [1]}')
    assert status == 400 and "error" in got
    label = b'{"instances": [{"image_bytes": {"b64": "%s"}, "label": 1}]}' % b64.encode()
    status, got = _raw_post(predict, label)  # still serving
    assert status == 200 and got["predictions"][0]["suggested_label_name"] in CLASS_NAMES
    status, got = _raw_post(predict, b'{"signature_name": "verify_label_name", "instances": [{"image_bytes": '
                            b'{"b64": "%s"}, "label_name": "ramen"}]}' % b64.encode())
    assert status == 400 and got["error"] == "unknown class 'ramen'; known: class_0, class_1, class_2, class_3"


def test_rest_never_writes_a_bare_nan():
    from cleannet_tf.serving.rest import _encode_json_value

    encoded = _encode_json_value("score", np.array([[np.nan, np.inf], [-np.inf, 0.5]], np.float32))
    assert json.loads(json.dumps(encoded, allow_nan=False)) == [["NaN", "Infinity"], ["-Infinity", 0.5]]


def test_server_refuses_png_and_gif_bombs_with_bounded_memory_and_keeps_serving(served, tmp_path):
    from image_bombs import write_gif_bomb, write_png_bomb

    write_png_bomb(tmp_path / "bomb.png")
    bomb = (tmp_path / "bomb.png").read_bytes()
    write_gif_bomb(tmp_path / "bomb.gif", frames=200)  # 2000 x 2000 frames: the screen size is within the limit
    gif_bomb = (tmp_path / "bomb.gif").read_bytes()
    rest_port = _free_port()
    process, port = start_serve_process(served, f"--rest_api_port={rest_port}")

    def peak_rss():
        return int(next(line for line in open(f"/proc/{process.pid}/status")
                        if line.startswith("VmHWM")).split()[1]) * 1024

    try:
        with Client(f"127.0.0.1:{port}") as client:
            client.verify_image(served["images"][:1], [0])
            client.classify_image(served["images"][:1])
            before = peak_rss()
            message = "image is 20000 x 20000 pixels, over the limit of 40000000"
            assert _details(lambda: client.verify_image(bomb, 0)) == message
            assert _details(lambda: client.verify_image([served["images"][0], bomb], ["class_0", "class_1"])) == message
            assert _details(lambda: client.predict(CLASSIFIER, {"image_bytes": np.array([bomb], object)})
                            ) == message
            assert _details(lambda: client.classify_image(bomb)) == message
            status, got = _raw_post(f"http://127.0.0.1:{rest_port}/v1/models/{CLASSIFIER}:predict",
                                    json.dumps({"instances": [{"b64": base64.b64encode(bomb).decode()}]}).encode())
            assert status == 400 and got["error"] == message
            gif_message = "GIF frames are 800000000 pixels in all, over the limit of 40000000"
            assert _details(lambda: client.verify_image(gif_bomb, 0)) == gif_message
            assert _details(lambda: client.classify_image(gif_bomb)) == gif_message
            growth = peak_rss() - before
            # Decoding them: 1.2 GB of uint8 pixels (PNG, 4.8 GB as float32); 800 MB of GIF frame rasters.
            assert growth < 300 << 20, growth
            assert client.verify_image(served["images"][:1], [0])["score"].shape == (1,)  # still serving
    finally:
        process.kill()
        process.wait()


# ----------------------------------------------------------------------------- export: one version, no litter

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


def test_the_demo_summary_rest_body_verifies_an_image(served, rest_url):
    from cleannet_tf.pipeline import demo

    image = served["images"][0]
    body = demo.rest_verify_body("class_3", base64.b64encode(image).decode()).encode()
    status, answer = _raw_post(f"{rest_url}:predict", body)
    assert status == 200, answer
    expected = served["client"].verify_image(image, "class_3")
    assert answer["predictions"][0]["score"] == pytest.approx(float(expected["score"][0]), abs=1e-5)
    assert answer["predictions"][0]["suggested_label_name"] == expected["suggested_label_name"][0].decode()
