"""A TF Serving-compatible server: gRPC PredictionService / ModelService and the REST API, on one ModelManager.

Implements Predict, Classify, GetModelMetadata, GetModelStatus and HandleReloadConfigRequest on the servicer
classes generated in `tensorflow-serving-api`, so the official stubs (and clients of the real
tensorflow_model_server) talk to it unchanged, with the real server's status codes: NOT_FOUND (unknown model
or version), FAILED_PRECONDITION (unknown signature), INVALID_ARGUMENT (inputs that do not match the
signature, bad image bytes, labels out of range). A failed request never stops the server.

    server = ModelServer(manager, port=8500, rest_port=8501)   # binds 127.0.0.1 by default
    server.start(); ...; server.stop()
"""

from __future__ import annotations

import base64
import json
import re
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from cleannet_tf.serving.model_manager import ModelManager, Servable, ServingError, from_model_server_config
from cleannet_tf.serving.tensor_proto import to_tensor_proto

MAX_MESSAGE_BYTES = 256 << 20
_STATE_NAMES = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


# --------------------------------------------------------------------------- the calls, transport-free


def predict(servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
            output_filter=()) -> dict[str, np.ndarray]:
    """Runs a signature on NumPy inputs the way TF Serving checks them; ServingError on a bad request."""
    signature_name = signature_name or "serving_default"
    if signature_name not in servable.signature_defs:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.')
    signature_def = servable.signature_defs[signature_name]
    expected = set(signature_def.inputs)
    if set(inputs) != expected:
        raise ServingError("INVALID_ARGUMENT", f"input size does not match signature: {len(inputs)}!={len(expected)} "
                           f"len({{{','.join(sorted(inputs))}}}) != len({{{','.join(sorted(expected))}}}). "
                           f"Sent extra: {sorted(set(inputs) - expected)}. Missing but required: "
                           f"{sorted(expected - set(inputs))}.")
    function = servable.signature(signature_name)
    specs = function.structured_input_signature[1]
    tensors = {}
    for name, value in inputs.items():
        spec = specs[name]
        try:
            tensor = tf.convert_to_tensor(value, dtype=spec.dtype)
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: expected {spec.dtype.name}: {error}") from None
        if not spec.shape.is_compatible_with(tensor.shape):
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: shape {tensor.shape} does not match the "
                               f"signature's {spec.shape}")
        tensors[name] = tensor
    try:
        outputs = function(**tensors)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
        raise ServingError("INVALID_ARGUMENT", error.message) from None
    except tf.errors.OpError as error:
        raise ServingError("INTERNAL", error.message) from None
    unknown = [name for name in output_filter if name not in outputs]
    if unknown:
        raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {unknown[0]}")
    return {name: outputs[name].numpy() for name in (list(output_filter) or list(outputs))}


def classify(servable: Servable, signature_name: str, serialized_examples: list[bytes]) -> list[list[tuple]]:
    """TF Serving's Classify: a signature with input "inputs" (serialized tf.Example) -> classes and/or scores."""
    signature_name = signature_name or "serving_default"
    if signature_name not in servable.signature_defs:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.')
    signature_def = servable.signature_defs[signature_name]
    if list(signature_def.inputs) != ["inputs"] or not {"classes", "scores"} & set(signature_def.outputs):
        raise ServingError("INVALID_ARGUMENT", f'Expected classification signature "{signature_name}" to have one '
                           'input "inputs" and outputs "classes" and/or "scores".')
    outputs = predict(servable, signature_name, {"inputs": np.array(serialized_examples, dtype=object)})
    scores, classes = outputs.get("scores"), outputs.get("classes")
    rows = len(serialized_examples)
    results = []
    for i in range(rows):
        count = (scores if scores is not None else classes).shape[1]
        results.append([(classes[i, j].decode() if classes is not None else "",
                         float(scores[i, j]) if scores is not None else 0.0) for j in range(count)])
    return results


# --------------------------------------------------------------------------- gRPC


def _resolve(manager: ModelManager, model_spec) -> Servable:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return manager.get(model_spec.name, version=version, label=model_spec.version_label or None)


def _abort(context, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        try:
            servable = _resolve(self.manager, request.model_spec)
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            signature_name = request.model_spec.signature_name or "serving_default"
            outputs = predict(servable, signature_name, inputs, list(request.output_filter))
        except ServingError as error:
            return _abort(context, error)
        except Exception as error:  # malformed tensors and the like: the request fails, the server stays
            return _abort(context, ServingError("INVALID_ARGUMENT", f"{type(error).__name__}: {error}"))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(to_tensor_proto(value))
        return response

    def Classify(self, request, context):
        try:
            servable = _resolve(self.manager, request.model_spec)
            kind = request.input.WhichOneof("kind")
            if kind == "example_list":
                examples = [e.SerializeToString() for e in request.input.example_list.examples]
            elif kind == "example_list_with_context":
                context_example = request.input.example_list_with_context.context
                examples = []
                for example in request.input.example_list_with_context.examples:
                    merged = tf.train.Example()
                    merged.CopyFrom(context_example)
                    merged.MergeFrom(example)
                    examples.append(merged.SerializeToString())
            else:
                raise ServingError("INVALID_ARGUMENT", "Input is empty.")
            signature_name = request.model_spec.signature_name or "serving_default"
            results = classify(servable, signature_name, examples)
        except ServingError as error:
            return _abort(context, error)
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for row in results:
            classifications = response.result.classifications.add()
            for label, score in row:
                classifications.classes.add(label=label, score=score)
        return response

    def GetModelMetadata(self, request, context):
        try:
            servable = _resolve(self.manager, request.model_spec)
            if list(request.metadata_field) != ["signature_def"]:
                raise ServingError("INVALID_ARGUMENT", "Metadata field signature_def is the only one supported.")
        except ServingError as error:
            return _abort(context, error)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, signature_def in servable.signature_defs.items():
            signature_map.signature_def[name].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request, context):
        try:
            version = request.model_spec.version.value if request.model_spec.HasField("version") else None
            rows = self.manager.status(request.model_spec.name, version)
        except ServingError as error:
            return _abort(context, error)
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, code, message in rows:
            status = response.model_version_status.add(version=version, state=state)
            status.status.error_code = code
            status.status.error_message = message
        return response

    def HandleReloadConfigRequest(self, request, context):
        response = model_management_pb2.ReloadConfigResponse()
        try:
            self.manager.reload_config(from_model_server_config(request.config))
        except Exception as error:
            response.status.error_code = 3  # INVALID_ARGUMENT
            response.status.error_message = str(error)
        return response


def replay_warmup(servable: Servable, record: bytes) -> None:
    """Runs one PredictionLog of assets.extra/tf_serving_warmup_requests against `servable` (raises if it fails)."""
    log = prediction_log_pb2.PredictionLog.FromString(record)
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
        predict(servable, request.model_spec.signature_name,
                {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()})
    elif kind == "classify_log":
        request = log.classify_log.request
        classify(servable, request.model_spec.signature_name,
                 [e.SerializeToString() for e in request.input.example_list.examples])
    else:
        raise ValueError(f"Unsupported warmup record type {kind!r}")


# --------------------------------------------------------------------------- REST (TF Serving's JSON API)

_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                   r"(?::(?P<verb>predict|classify)|(?P<metadata>/metadata))?$")


def _decode_json_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    return value


def _encode_json_value(name: str, value: np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
        flat = [v if isinstance(v, bytes) else bytes(v) for v in value.reshape(-1)]
        items = [{"b64": base64.b64encode(v).decode()} if name.endswith("_bytes") else v.decode("utf-8", "replace")
                 for v in flat]
        return np.array(items, dtype=object).reshape(value.shape).tolist()
    return value.tolist()


class _RestHandler(BaseHTTPRequestHandler):
    manager: ModelManager

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logging.debug("REST " + format, *args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: ServingError) -> None:
        status = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400}.get(error.code, 500)
        self._reply(status, {"error": error.message})

    def _servable(self, match) -> Servable:
        version = int(match["version"]) if match["version"] else None
        return self.manager.get(match["name"], version=version, label=match["label"])

    def do_GET(self):  # noqa: N802 (http.server's name)
        match = _PATH.match(self.path)
        if not match or match["verb"]:
            return self._reply(404, {"error": f"Malformed request: GET {self.path}"})
        try:
            if match["metadata"]:
                from google.protobuf import json_format

                servable = self._servable(match)
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                for name, signature_def in servable.signature_defs.items():
                    signature_map.signature_def[name].CopyFrom(signature_def)
                return self._reply(200, {"model_spec": {"name": servable.name, "version": str(servable.version)},
                                         "metadata": {"signature_def": json_format.MessageToDict(signature_map)}})
            version = int(match["version"]) if match["version"] else None
            rows = self.manager.status(match["name"], version)
            return self._reply(200, {"model_version_status": [
                {"version": str(v), "state": _STATE_NAMES.get(state, str(state)),
                 "status": {"error_code": _CODE_NAMES.get(code, str(code)), "error_message": message}}
                for v, state, code, message in rows]})
        except ServingError as error:
            return self._error(error)

    def do_POST(self):  # noqa: N802
        match = _PATH.match(self.path)
        if not match or not match["verb"]:
            return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            servable = self._servable(match)
            signature_name = body.get("signature_name", "serving_default")
            if match["verb"] == "classify":
                examples = [_json_example(e) for e in body.get("examples", [])]
                results = classify(servable, signature_name, examples)
                return self._reply(200, {"results": [[[label, score] for label, score in row] for row in results]})
            if ("instances" in body) == ("inputs" in body):
                raise ServingError("INVALID_ARGUMENT", 'Request must have exactly one of "instances" or "inputs".')
            names = list(servable.signature_defs.get(signature_name, _Empty).inputs)
            if "inputs" in body:
                columns = body["inputs"] if isinstance(body["inputs"], dict) else {names[0]: body["inputs"]}
                inputs = {k: np.array(_decode_json_value(v), dtype=object if _is_bytes(v) else None)
                          for k, v in columns.items()}
            else:
                rows = body["instances"]
                if rows and isinstance(rows[0], dict) and not set(rows[0]) == {"b64"}:
                    inputs = {k: np.array([_decode_json_value(r[k]) for r in rows],
                                          dtype=object if _is_bytes([r[k] for r in rows]) else None) for k in rows[0]}
                else:
                    inputs = {names[0] if names else "inputs": np.array(
                        [_decode_json_value(r) for r in rows], dtype=object if _is_bytes(rows) else None)}
            outputs = predict(servable, signature_name, inputs)
        except ServingError as error:
            return self._error(error)
        except (ValueError, KeyError, TypeError) as error:
            return self._error(ServingError("INVALID_ARGUMENT", f"Malformed request: {error}"))
        if "inputs" in body:
            return self._reply(200, {"outputs": {k: _encode_json_value(k, v) for k, v in outputs.items()}})
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return self._reply(200, {"predictions": _encode_json_value(name, value)})
        count = len(next(iter(outputs.values())))
        return self._reply(200, {"predictions": [{k: _encode_json_value(k, v[i:i + 1])[0] for k, v in outputs.items()}
                                                 for i in range(count)]})


class _Empty:
    inputs: dict = {}


def _is_bytes(value) -> bool:
    if isinstance(value, dict):
        return set(value) == {"b64"}
    if isinstance(value, list):
        return bool(value) and _is_bytes(value[0])
    return isinstance(value, str)


def _json_example(example: dict) -> bytes:
    """A TF Serving REST example ({"feature": value or [values] or {"b64": ...}}) -> serialized tf.Example."""
    features = {}
    for name, value in example.items():
        values = value if isinstance(value, list) else [value]
        values = [_decode_json_value(v) for v in values]
        if all(isinstance(v, bytes | str) for v in values):
            features[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[v.encode() if isinstance(v, str) else v for v in values]))
        elif all(isinstance(v, int) for v in values):
            features[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=values))
        else:
            features[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


# --------------------------------------------------------------------------- the server


class ModelServer:
    """gRPC (and optionally REST) on a ModelManager. Binds `host` (127.0.0.1 by default)."""

    def __init__(self, manager: ModelManager, *, port: int = 8500, rest_port: int = 0, host: str = "127.0.0.1",
                 max_workers: int = 16):
        self.manager = manager
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager),
                                                                            self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), self.grpc_server)
        self.port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"Could not bind gRPC to {host}:{port}.")
        self.rest_server = None
        self.rest_port = 0
        if rest_port:
            handler = type("RestHandler", (_RestHandler,), {"manager": manager})
            self.rest_server = ThreadingHTTPServer((host, rest_port), handler)
            self.rest_port = self.rest_server.server_address[1]

    def start(self) -> None:
        self.grpc_server.start()
        if self.rest_server is not None:
            threading.Thread(target=self.rest_server.serve_forever, name="rest", daemon=True).start()
        self.manager.start_polling()
        logging.info("Serving %s: gRPC on port %d%s.", ", ".join(self.manager.model_names()), self.port,
                     f", REST on port {self.rest_port}" if self.rest_server else "")

    def stop(self, grace: float = 5.0) -> None:
        """Stops taking requests, lets running ones finish (up to `grace` seconds), stops polling."""
        if self.rest_server is not None:
            self.rest_server.shutdown()
            self.rest_server.server_close()
        self.grpc_server.stop(grace).wait()
        self.manager.stop()
