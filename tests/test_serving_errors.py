"""Clear, bounded error messages from cleannet-serve: empty instances, float32 overflow, echoed megabytes."""

from __future__ import annotations

import http.client
import json
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tiny_savedmodel import write_scaler

from cleannet_tf.serving import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        rest_port = s.getsockname()[1]
    base = tmp_path_factory.mktemp("errors") / "doubler"
    write_scaler(base, 2.0)
    server = start_server(model_name="doubler", model_base_path=str(base), port=0, rest_port=rest_port)
    yield server
    server.stop(grace=1)


def _post(server, path: str, body) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    try:
        connection.request("POST", path, body=json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_empty_instances_are_a_clear_invalid_argument(server):
    assert _post(server, "/v1/models/doubler:predict", {"instances": []}) == (
        400, {"error": 'Malformed request: "instances" is empty; send at least one instance'})


def test_a_value_beyond_float32_is_out_of_range_naming_the_input(server):
    status, body = _post(server, "/v1/models/doubler:predict", {"instances": [1.0, 1e39]})
    assert status == 400
    assert body["error"] == "JSON value of input 'x' is out of range for float32: 1e+39 (largest 3.402823e+38)"
    assert _post(server, "/v1/models/doubler:predict", {"instances": [1.0, 1e38]}) == (200, {"predictions": [
        2.0, pytest.approx(2e38, rel=1e-6)]})
    from cleannet_tf.serving.client import float32_input  # the client checks before it sends

    with pytest.raises(ValueError, match=r"^input 'features': value 1e\+39 is out of range for float32"):
        float32_input("features", np.array([[1.0, 1e39]]))
    np.testing.assert_array_equal(float32_input("features", [[1, 2.5]]), np.array([[1, 2.5]], np.float32))


def test_a_megabyte_path_or_name_is_not_echoed_whole(server):
    status, body = _post(server, f"/v1/models/{'m' * 60_000}:predict", {"instances": [1.0]})  # < 64 KB line
    assert status == 404 and len(body["error"]) < 1000
    echoed = f"Latest({'m' * 60_000})"  # one run of non-space characters, cut to 200
    assert body["error"] == f"Servable not found for request: {echoed[:200]}...(60008 characters)"
    status, body = _post(server, "/v2/" + "p" * 60_000, {})
    assert status == 404 and len(body["error"]) < 1000 and body["error"].startswith("Malformed request: POST /v2/ppp")

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m" * 1_000_000
    request.model_spec.signature_name = "s" * 100_000
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(2, np.float32)))
    with grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[
            ("grpc.max_send_message_length", 8 << 20)]) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND and len(caught.value.details()) < 1000
