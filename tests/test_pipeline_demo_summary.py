"""The demo's summary: its copyable curl and Python lines against the server it started, its warnings."""

import base64
import http.server
import json
import shlex
import subprocess
import threading

from cleannet_tf.pipeline import demo as pipeline_demo


def _summary(image_path: str) -> dict:
    detection = {"mode": "stacked", "detection_error": 0.01, "detection_error_heldout": 0.02,
                 "detection_error_all": 0.015, "signals": []}
    return {
        "dataset": "/data", "images": 10, "classes": 2, "test_images": 2, "noise_rate": None, "verified_train": 4,
        "verified_val": 4, "heldout_classes": 0, "steps": {"verify": "threshold 0.5"}, "replicas": 1,
        "detection": {"cleannet": detection, "centroid": dict(detection)},
        "served": {"port": 45001, "rest_port": 45002, "models_config": "/w/saved_models/models.config",
                   "seconds": 0.01, "classified": ("a.jpg", "cat's", 0.9),
                   "example": {"path": image_path, "label": 'cat\'s "x"', "rest_score": -0.5},
                   "rows": [{"key": "a.jpg", "label": "cat", "score": -0.5, "noisy": True, "suggested": "dog"}]},
        "warnings": ["classifier: test accuracy 0.190 is near chance"],
    }


class _Recorder(http.server.BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802
        _Recorder.bodies.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_summary_ends_with_copyable_serve_curl_and_python_lines(tmp_path):
    image = tmp_path / "an image's folder" / "x.jpg"
    image.parent.mkdir()
    image.write_bytes(bytes(range(256)) * 3)
    text = pipeline_demo.format_summary(_summary(str(image)), seconds=12)
    lines = text.splitlines()
    serve = next(line for line in lines if "cleannet-serve" in line).strip()
    assert serve == ("cleannet-serve --model_config_file=/w/saved_models/models.config --port=45001 "
                     "--rest_api_port=45002 &")
    curl = next(line for line in lines if line.strip().startswith("curl ")).strip()
    python = next(line for line in lines if line.strip().startswith("python -c ")).strip()
    assert lines[-1] == "  WARNING        classifier: test accuracy 0.190 is near chance"

    # The curl line, run by bash as a user would paste it, sends the REST body the demo checked.
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        pasted = curl.replace("127.0.0.1:45002", f"127.0.0.1:{server.server_address[1]}")
        subprocess.run(["bash", "-c", pasted], check=True, timeout=60, capture_output=True)
    finally:
        server.shutdown()
    path, body = _Recorder.bodies[-1]
    assert path == "/v1/models/cleannet_verifier:predict"
    expected = pipeline_demo.rest_verify_body('cat\'s "x"', base64.b64encode(image.read_bytes()).decode())
    assert json.loads(body) == json.loads(expected)
    assert json.loads(body)["signature_name"] == "verify_label_name"

    # The Python line is one shell word of valid Python naming the same port, image and label.
    words = shlex.split(python)
    assert words[:2] == ["python", "-c"] and len(words) == 3
    compile(words[2], "<python line>", "exec")
    assert "Client(\"127.0.0.1:45001\")" in words[2] and json.dumps(str(image)) in words[2]
