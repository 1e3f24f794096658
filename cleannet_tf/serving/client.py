"""A small client on the official TF Serving stubs, for this package's server or tensorflow/serving.

    client = Client("127.0.0.1:8500")
    client.verify_image("photo.jpg", label="ramen")        # label: class id or name
    client.verify_features(features, labels)
    client.classify_image("photo.jpg")                     # [(class name, score)], best first
    client.signatures("cleannet_verifier")

Every call returns NumPy arrays by output name (or lists for classify) and raises grpc.RpcError with the
server's status code on a bad request. The verify calls' outputs: score, is_noisy, weight_soft,
suggested_label (class id), suggested_label_name (class name, bytes), suggested_score.

Imports `export`, `serving.tensor_proto`.
"""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    input_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cleannet_tf.export.names import CLASSIFIER, MAX_MESSAGE_BYTES, VERIFIER
from cleannet_tf.serving.tensor_proto import to_tensor_proto


def float32_input(name: str, values) -> np.ndarray:
    """`values` as float32; ValueError naming the input if a finite value is beyond float32's range (it would
    otherwise arrive as Inf)."""
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        return np.asarray(array, np.float32)
    with np.errstate(over="ignore"):
        converted = array.astype(np.float32)
    overflow = np.isfinite(array) & ~np.isfinite(converted)
    if overflow.any():
        value = float(array.reshape(-1)[np.argmax(overflow.reshape(-1))])
        raise ValueError(f"input {name!r}: value {value!r} is out of range for float32 (largest "
                         f"{float(np.finfo(np.float32).max):.7g})")
    return converted


def _read(image) -> bytes:
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    with open(image, "rb") as f:
        return f.read()


class Client:
    """Args: target "host:port" of a gRPC PredictionService; timeout in seconds per call."""

    def __init__(self, target: str = "127.0.0.1:8500", *, timeout: float = 30.0):
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def predict(self, model: str, inputs: dict, *, signature: str = "serving_default",
                version: int | None = None) -> dict[str, np.ndarray]:
        """Predict with NumPy inputs: name -> array (strings as bytes objects)."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(to_tensor_proto(value))
        response = self.stub.Predict(request, timeout=self.timeout)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def verify_image(self, images, label, *, model: str = VERIFIER, version: int | None = None) -> dict:
        """One image (path or bytes) or a list, with its label (class id or name, or a list): score, is_noisy, ..."""
        images = [images] if isinstance(images, str | bytes | bytearray) else list(images)
        labels = [label] if np.ndim(label) == 0 else list(label)
        image_bytes = np.array([_read(image) for image in images], dtype=object)
        if isinstance(labels[0], str):
            return self.predict(model, {"image_bytes": image_bytes,
                                        "label_name": np.array([s.encode() for s in labels], dtype=object)},
                                signature="verify_label_name", version=version)
        return self.predict(model, {"image_bytes": image_bytes, "label": np.asarray(labels, np.int64)},
                            version=version)

    def verify_features(self, features, labels, *, model: str = VERIFIER, version: int | None = None) -> dict:
        """features (B, D), labels (B,) class ids -> score, is_noisy, weight_soft, suggested_label,
        suggested_label_name, suggested_score, each (B,)."""
        return self.predict(model, {"features": float32_input("features", features),
                                    "label": np.asarray(labels, np.int64)}, signature="verify_features",
                            version=version)

    def embed_image(self, images, *, model: str = VERIFIER) -> np.ndarray:
        images = [images] if isinstance(images, str | bytes | bytearray) else list(images)
        return self.predict(model, {"image_bytes": np.array([_read(i) for i in images], dtype=object)},
                            signature="embed")["query_embedding"]

    def classify_image(self, images, *, model: str = CLASSIFIER, top: int = 5) -> list[list[tuple[str, float]]]:
        """Classify API (tf.Example with "image/encoded"): per image the `top` (class name, score), best first."""
        images = [images] if isinstance(images, str | bytes | bytearray) else list(images)
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "classify"
        examples = [tf.train.Example(features=tf.train.Features(feature={"image/encoded": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[_read(image)]))})) for image in images]
        request.input.CopyFrom(input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples)))
        response = self.stub.Classify(request, timeout=self.timeout)
        return [sorted(((c.label, c.score) for c in result.classes), key=lambda item: -item[1])[:top]
                for result in response.result.classifications]

    def signatures(self, model: str) -> dict:
        """GetModelMetadata: signature name -> SignatureDef."""
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = model
        request.metadata_field.append("signature_def")
        response = self.stub.GetModelMetadata(request, timeout=self.timeout)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return dict(signature_map.signature_def)
