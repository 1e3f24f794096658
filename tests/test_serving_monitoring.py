"""cleannet-serve's operator metrics (TF Serving's --monitoring_config_file, Prometheus text format) and the
REST idle timeout, over real gRPC and HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tiny_savedmodel import write_scaler

from cleannet_tf.serving import start_server
from cleannet_tf.serving.metrics import DEFAULT_PROMETHEUS_PATH, LATENCY_BUCKETS_USEC, parse_monitoring_config

_SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
                     r',?)*)\})? (?P<value>[-+]?(?:\d+(?:\.\d*)?(?:e[-+]?\d+)?|Inf))$')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_monitoring_config_is_read_as_tf_serving_reads_it(tmp_path):
    assert parse_monitoring_config('prometheus_config { enable: true, path: "/m/p" }') == "/m/p"
    assert parse_monitoring_config("# operators' metrics\nprometheus_config <\n  enable: true\n>\n") == (
        DEFAULT_PROMETHEUS_PATH)
    assert parse_monitoring_config('prometheus_config { enable: false path: "/x" }') is None
    assert parse_monitoring_config("") is None
    with pytest.raises(ValueError, match=r"^mon\.config: 1:\d+ : .*enabel"):
        parse_monitoring_config("prometheus_config { enabel: true }", source="mon.config")
    with pytest.raises(ValueError, match=r"^mon\.config: prometheus_config\.path must start with '/'"):
        parse_monitoring_config('prometheus_config { enable: true path: "metrics" }', source="mon.config")


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition; each line must follow the format."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"].replace("Inf", "inf"))
    return samples


def _grpc_predict(port: int, name: str, values) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _http(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=json.dumps(body) if body is not None else None)
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type")
    finally:
        connection.close()


def test_prometheus_metrics_count_grpc_and_rest_requests_and_loads(tmp_path):
    base = tmp_path / "doubler"
    write_scaler(base, 2.0, version=1)
    (base / "2").mkdir()
    (base / "2" / "saved_model.pb").write_bytes(b"not a SavedModel")  # fails to load; version 1 serves
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n')
    server = start_server(model_name="doubler", model_base_path=str(base), port=0, rest_port=_free_port(),
                          poll_seconds=0.1, monitoring_config_file=str(config))
    try:
        for _ in range(2):
            _grpc_predict(server.port, "doubler", np.array([1.0, 2.0], np.float32))
        with pytest.raises(grpc.RpcError) as caught:
            _grpc_predict(server.port, "doubler", np.array([1, 2], np.int64))  # the signature takes float32
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status, body, _ = _http(server.rest_port, "POST", "/v1/models/doubler:predict", {"instances": [1.0, 3.0]})
        assert status == 200 and json.loads(body) == {"predictions": [2.0, 6.0]}
        status, _, _ = _http(server.rest_port, "POST", "/v1/models/absent:predict", {"instances": [1.0]})
        assert status == 404

        status, body, content_type = _http(server.rest_port, "GET", "/monitoring/prometheus/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "# TYPE :tensorflow:serving:request_count counter" in text
        assert "# TYPE :tensorflow:serving:request_latency histogram" in text
        assert "# TYPE :tensorflow:cc:saved_model:load_attempt_count counter" in text
        samples = _samples(text)

        def value(name, **labels):
            return samples.get((name, frozenset(labels.items())))

        count = ":tensorflow:serving:request_count"
        assert value(count, model_name="doubler", status="OK") == 3  # 2 gRPC + 1 REST
        assert value(count, model_name="doubler", status="INVALID_ARGUMENT") == 1
        assert value(count, model_name="absent", status="NOT_FOUND") == 1
        latency = ":tensorflow:serving:request_latency"
        for entrypoint, requests in (("GRPC", 2), ("REST", 1)):
            labels = {"model_name": "doubler", "API": "Predict", "entrypoint": entrypoint}
            assert value(f"{latency}_count", **labels) == requests
            buckets = [value(f"{latency}_bucket", **labels, le=le) for le in
                       [*(str(int(b)) if float(b).is_integer() else repr(b) for b in LATENCY_BUCKETS_USEC), "+Inf"]]
            assert None not in buckets and buckets == sorted(buckets) and buckets[-1] == requests
            assert 0 < value(f"{latency}_sum", **labels) < requests * 30e6  # microseconds
        loads = ":tensorflow:cc:saved_model:load_attempt_count"
        assert value(loads, model_path=str(base / "1"), status="success") == 1
        assert value(loads, model_path=str(base / "2"), status="fail") >= 1
        assert _http(server.rest_port, "GET", "/metrics")[0] == 404  # only the configured path
    finally:
        server.stop(grace=1)


def test_without_a_monitoring_config_no_metrics_are_served(tmp_path):
    write_scaler(tmp_path / "doubler", 2.0)
    config = tmp_path / "monitoring.config"
    config.write_text("prometheus_config { enable: false }")
    server = start_server(model_name="doubler", model_base_path=str(tmp_path / "doubler"), port=0,
                          rest_port=_free_port(), monitoring_config_file=str(config))
    try:
        assert _http(server.rest_port, "GET", DEFAULT_PROMETHEUS_PATH)[0] == 404
    finally:
        server.stop(grace=1)
    config.write_text("prometheus_config { enable: true }")
    with pytest.raises(ValueError, match=f"^{config}: Prometheus metrics are served on the REST port"):
        start_server(model_name="doubler", model_base_path=str(tmp_path / "doubler"), port=0,
                     monitoring_config_file=str(config))


def test_an_idle_rest_connection_is_closed_and_the_server_keeps_serving(tmp_path):
    write_scaler(tmp_path / "doubler", 2.0)
    server = start_server(model_name="doubler", model_base_path=str(tmp_path / "doubler"), port=0,
                          rest_port=_free_port(), rest_idle_timeout=0.5)
    try:
        silent = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
        half = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
        half.sendall(b"POST /v1/models/doubler:predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # then stalls
        start = time.monotonic()
        assert silent.recv(1024) == b""  # closed by the server, not by our 10 s timeout
        assert time.monotonic() - start < 5
        reply = b""
        while chunk := half.recv(65536):  # until the server closes it
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408 ") and b"Request timed out" in reply
        assert time.monotonic() - start < 5
        silent.close()
        half.close()
        status, body, _ = _http(server.rest_port, "POST", "/v1/models/doubler:predict", {"instances": [1.5]})
        assert status == 200 and json.loads(body) == {"predictions": [3.0]}
    finally:
        server.stop(grace=1)


@pytest.mark.slow
def test_the_serve_command_takes_the_monitoring_idle_timeout_and_reload_flags(tmp_path):
    """One cleannet-serve process: --monitoring_config_file, --rest_api_idle_timeout_seconds and
    --allow_model_reload_under (repeated)."""
    from test_serving_reload import _reload

    allowed = tmp_path / "allowed"
    write_scaler(allowed / "doubler", 2.0)
    write_scaler(allowed / "tripler", 3.0)
    write_scaler(tmp_path / "elsewhere" / "evil", -1.0)
    config = tmp_path / "monitoring.config"
    config.write_text('prometheus_config { enable: true path: "/metrics" }')
    rest_port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cleannet_tf.cli.serve", "--model_name=doubler",
         f"--model_base_path={allowed / 'doubler'}", "--port=0", f"--rest_api_port={rest_port}",
         f"--monitoring_config_file={config}", "--rest_api_idle_timeout_seconds=0.5",
         f"--allow_model_reload_under={tmp_path / 'other'}", f"--allow_model_reload_under={allowed}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line, deadline = "", time.time() + 120
        while "READY" not in line and time.time() < deadline and process.poll() is None:
            line = process.stdout.readline()
        assert f"rest={rest_port}" in line, line
        port = int(line.split("grpc=")[1].split()[0])
        _grpc_predict(port, "doubler", np.array([1.0], np.float32))
        status, body, _ = _http(rest_port, "GET", "/metrics")
        samples = _samples(body.decode())
        assert status == 200
        assert samples[(":tensorflow:serving:request_count", frozenset({("model_name", "doubler"),
                                                                        ("status", "OK")}))] == 1
        assert samples[(":tensorflow:cc:saved_model:load_attempt_count", frozenset({
            ("model_path", str(allowed / "doubler" / "1")), ("status", "success")}))] == 1
        idle = socket.create_connection(("127.0.0.1", rest_port), timeout=10)
        start = time.monotonic()
        assert idle.recv(1024) == b"" and time.monotonic() - start < 5
        idle.close()

        with pytest.raises(grpc.RpcError) as caught:
            _reload(port, evil=str(tmp_path / "elsewhere" / "evil"))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _reload(port, tripler=str(allowed / "tripler")).status.error_code == 0
        _grpc_predict(port, "tripler", np.array([1.0], np.float32))
    finally:
        process.terminate()
        process.wait(timeout=30)
