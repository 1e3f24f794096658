"""HandleReloadConfigRequest is refused (PERMISSION_DENIED) unless cleannet-serve allows base paths under a root.

Over real gRPC on loopback with the official tensorflow-serving-api stubs. The flag itself (python -m
cleannet_tf.cli.serve --allow_model_reload_under) is tested with the other flags in test_serving_monitoring.py.
"""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tiny_savedmodel import write_scaler

from cleannet_tf.serving import start_server


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """root/allowed/{doubler,tripler} and root/elsewhere/evil, plus a link allowed/link -> elsewhere/evil."""
    root = tmp_path_factory.mktemp("reload")
    write_scaler(root / "allowed" / "doubler", 2.0)
    write_scaler(root / "allowed" / "tripler", 3.0)
    write_scaler(root / "elsewhere" / "evil", -1.0)
    os.symlink(root / "elsewhere" / "evil", root / "allowed" / "link")
    return root


def _reload(port: int, **models: str):
    request = model_management_pb2.ReloadConfigRequest()
    for name, base_path in models.items():
        request.config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)


def _predict(port: int, name: str) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 2.0], np.float32)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
    return tf.make_ndarray(response.outputs["y"])


def test_reload_is_refused_unless_allowed_and_the_served_models_stay(models):
    server = start_server(model_name="doubler", model_base_path=str(models / "allowed" / "doubler"), port=0,
                          poll_seconds=0.1)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _reload(server.port, evil=str(models / "elsewhere" / "evil"))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "--allow_model_reload_under" in caught.value.details()
        np.testing.assert_array_equal(_predict(server.port, "doubler"), [2.0, 4.0])  # still served, unchanged
        assert server.manager.model_names() == ["doubler"]
    finally:
        server.stop(grace=1)


def test_reload_loads_base_paths_under_an_allowed_root_only(models):
    allowed = str(models / "allowed")
    server = start_server(model_name="doubler", model_base_path=os.path.join(allowed, "doubler"), port=0,
                          poll_seconds=0.1, reload_roots=(allowed,))
    try:
        for name, path in [("evil", str(models / "elsewhere" / "evil")),
                           ("link", os.path.join(allowed, "link")),  # a link out of the root
                           ("dots", os.path.join(allowed, "..", "elsewhere", "evil")),
                           ("relative", "doubler")]:
            with pytest.raises(grpc.RpcError) as caught:
                _reload(server.port, doubler=os.path.join(allowed, "doubler"), **{name: path})
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert f"base_path {path!r} is not under --allow_model_reload_under" in caught.value.details()
        assert server.manager.model_names() == ["doubler"]

        response = _reload(server.port, tripler=os.path.join(allowed, "tripler"))
        assert response.status.error_code == 0, response
        np.testing.assert_array_equal(_predict(server.port, "tripler"), [3.0, 6.0])
        with pytest.raises(grpc.RpcError) as caught:
            _predict(server.port, "doubler")  # the reload replaced the configuration
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        server.stop(grace=1)
