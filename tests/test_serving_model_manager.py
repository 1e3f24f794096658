"""The model manager (cleannet_tf/serving/model_manager.py): new versions picked up under load, corrupt or
half-copied versions never take the model offline."""

import json
import os
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import tensorflow as tf
from serving_helpers import _free_port, _publish
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
)

from cleannet_tf.export.names import VERIFIER
from cleannet_tf.serving import Client, start_server
from cleannet_tf.serving.signatures import replay_warmup


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
