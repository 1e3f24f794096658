"""The TF Serving-compatible gRPC server and its client (cleannet_tf/serving/server.py, client.py, cli/serve), over
real gRPC on loopback with the official stubs."""

import base64
import json
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_helpers import CALIBRATION, CLASS_NAMES, IMAGE_SIZE, _free_port, _raw_post
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
)

from cleannet_tf.data import images as data_images
from cleannet_tf.detection import calibration as calibration_lib
from cleannet_tf.export.names import CLASSIFIER, VERIFIER
from cleannet_tf.serving import Client


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
