"""The REST API in TF Serving's JSON format (cleannet_tf/serving/rest.py)."""

import base64
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from serving_helpers import CLASS_NAMES, _free_port, _raw_post

from cleannet_tf.export.names import VERIFIER


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


def _post(url, payload):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request))


@pytest.fixture(scope="module")
def rest_url(served):
    from cleannet_tf.serving.server import ModelServer

    http = ModelServer(served["server"].manager, port=0, rest_port=_free_port())
    threading.Thread(target=http.rest_server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{http.rest_port}/v1/models/{VERIFIER}"
    http.rest_server.shutdown()
    http.grpc_server.stop(0)


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


def test_the_demo_summary_rest_body_verifies_an_image(served, rest_url):
    from cleannet_tf.pipeline import demo

    image = served["images"][0]
    body = demo.rest_verify_body("class_3", base64.b64encode(image).decode()).encode()
    status, answer = _raw_post(f"{rest_url}:predict", body)
    assert status == 200, answer
    expected = served["client"].verify_image(image, "class_3")
    assert answer["predictions"][0]["score"] == pytest.approx(float(expected["score"][0]), abs=1e-5)
    assert answer["predictions"][0]["suggested_label_name"] == expected["suggested_label_name"][0].decode()
