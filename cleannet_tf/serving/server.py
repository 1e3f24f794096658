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
import codecs
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


def plain_message(message: str) -> str:
    """The useful line of a TensorFlow op error: an assertion's own text, without "Graph execution error",
    the Python stack of where the node was defined, and the node name."""
    match = re.search(r"assertion failed: \[(.*?)\]\s*\n\s*\[\[", message, re.S)
    if match:  # the Assert op C-escapes its strings (\' for ', octal for non-ASCII bytes)
        return codecs.escape_decode(match.group(1).encode("utf-8"))[0].decode("utf-8", "replace")
    match = re.search(r"Summarized data: b'(.*)'\s*$", message, re.S)  # the eager form of an assertion
    if match:
        return match.group(1)
    head = message.split("\n\t [[")[0]
    if head.startswith("Graph execution error"):
        head = head.rsplit("\n\n", 1)[-1]
    return head.strip()


def _dtype_name(array: np.ndarray) -> str:
    return "string" if array.dtype == object or array.dtype.kind in "SU" else tf.as_dtype(array.dtype).name


def _dtype_matches(array: np.ndarray, dtype: tf.DType) -> bool:
    """True if `array` is of `dtype` exactly (strings: bytes objects); TF Serving never casts an input."""
    if dtype == tf.string:
        return array.dtype.kind == "S" or (array.dtype == object and all(
            isinstance(v, bytes) for v in array.reshape(-1)))
    return array.dtype != object and array.dtype.kind not in "SU" and tf.as_dtype(array.dtype) == dtype


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
        array = np.asarray(value)
        if not _dtype_matches(array, spec.dtype):
            raise ServingError("INVALID_ARGUMENT", f"Expects arg {name!r} to be {spec.dtype.name} but "
                               f"{_dtype_name(array)} is provided")
        if spec.dtype.is_floating and not np.all(np.isfinite(array)):
            raise ServingError("INVALID_ARGUMENT", f"input {name!r} has NaN or Inf values; every value must be "
                               "finite")
        try:
            tensor = tf.convert_to_tensor(array, dtype=spec.dtype)
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: expected {spec.dtype.name}: {error}") from None
        if not spec.shape.is_compatible_with(tensor.shape):
            raise ServingError("INVALID_ARGUMENT", f"input {name!r}: shape {tensor.shape} does not match the "
                               f"signature's {spec.shape}")
        tensors[name] = tensor
    try:
        outputs = function(**tensors)
    except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
        raise ServingError("INVALID_ARGUMENT", plain_message(error.message)) from None
    except tf.errors.OpError as error:
        raise ServingError("INTERNAL", plain_message(error.message)) from None
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
        except Exception as error:  # the request fails, the server stays
            return _abort(context, ServingError("INVALID_ARGUMENT", f"{type(error).__name__}: {error}"))
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


MAX_REST_BODY_BYTES = MAX_MESSAGE_BYTES


def _decode_json_value(value):
    if isinstance(value, dict) and set(value) == {"b64"}:
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (TypeError, ValueError) as error:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: bad b64 value: {error}") from None
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    return value


def _json_input(name: str, value, dtype: tf.DType) -> np.ndarray:
    """A JSON value -> an array of the signature's dtype, as TF Serving parses JSON: ints (and floats) for a
    float input, ints only for an int input, true/false for bool, strings or {"b64": ...} for string."""
    if dtype == tf.string:
        array = np.array(_decode_json_value(value), dtype=object)
        flat = array.reshape(-1)
        for i, item in enumerate(flat):
            if isinstance(item, str):
                flat[i] = item.encode()
            elif not isinstance(item, bytes):
                raise ServingError("INVALID_ARGUMENT", f"JSON value {item!r} of input {name!r} is not a string "
                                   'or {"b64": ...}')
        return array
    array = np.array(value)
    kind = array.dtype.kind
    fits = kind == "b" if dtype.is_bool else kind in "iu" if dtype.is_integer else kind in "iuf"
    if not fits:
        example = next((v for v in array.reshape(-1) if not isinstance(v, bool | int | float)), array.reshape(-1)[:1])
        raise ServingError("INVALID_ARGUMENT", f"JSON value of input {name!r} is not {dtype.name}: "
                           f"{np.asarray(example).tolist()!r:.80}")
    if dtype.is_integer and array.size:
        info = np.iinfo(dtype.as_numpy_dtype)
        if array.min() < info.min or array.max() > info.max:
            raise ServingError("INVALID_ARGUMENT", f"JSON value of input {name!r} is out of range for {dtype.name}")
    return array.astype(dtype.as_numpy_dtype)


def _json_float(value: float):
    """A float for JSON: NaN and +-Inf as the strings "NaN", "Infinity", "-Infinity" (proto3 JSON), never bare."""
    if np.isfinite(value):
        return value
    return "NaN" if np.isnan(value) else "Infinity" if value > 0 else "-Infinity"


def _encode_json_value(name: str, value: np.ndarray):
    if value.dtype == object or value.dtype.kind == "S":
        flat = [v if isinstance(v, bytes) else bytes(v) for v in value.reshape(-1)]
        items = [{"b64": base64.b64encode(v).decode()} if name.endswith("_bytes") else v.decode("utf-8", "replace")
                 for v in flat]
        return np.array(items, dtype=object).reshape(value.shape).tolist()
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        return np.array([_json_float(v) for v in value.reshape(-1).tolist()], dtype=object).reshape(
            value.shape).tolist()
    return value.tolist()


class _RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST API. Every request gets a JSON answer; an error is {"error": "..."} with 4xx/5xx."""

    manager: ModelManager
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logging.debug("REST " + format, *args)

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: ServingError) -> None:
        status = {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400,
                  "RESOURCE_EXHAUSTED": 413}.get(error.code, 500)
        self._reply(status, {"error": error.message})

    def _servable(self, match) -> Servable:
        version = int(match["version"]) if match["version"] else None
        return self.manager.get(match["name"], version=version, label=match["label"])

    def do_GET(self):  # noqa: N802 (http.server's name)
        try:
            self._get()
        except Exception as error:  # never a dropped connection
            logging.exception("REST GET %s failed", self.path)
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})

    def _get(self):
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

    def _read_body(self):
        """The request's JSON object; ServingError (with close_connection set for bodies not read) otherwise."""
        try:
            length = int(self.headers.get("Content-Length", 0))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            raise ServingError("INVALID_ARGUMENT", "Malformed request: bad Content-Length header")
        if length > MAX_REST_BODY_BYTES:
            self.close_connection = True
            raise ServingError("RESOURCE_EXHAUSTED", f"Request body of {length} bytes is over the limit of "
                               f"{MAX_REST_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except UnicodeDecodeError as error:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: body is not UTF-8 ({error})") from None
        except ValueError as error:
            raise ServingError("INVALID_ARGUMENT", f"Malformed request: JSON parse error: {error}") from None
        except RecursionError:
            raise ServingError("INVALID_ARGUMENT", "Malformed request: JSON nested too deep") from None
        if not isinstance(body, dict):
            raise ServingError("INVALID_ARGUMENT", "Malformed request: the body must be a JSON object, got "
                               f"{type(body).__name__ if body is not None else 'null'}")
        return body

    def do_POST(self):  # noqa: N802
        try:
            self._post()
        except ServingError as error:
            self._error(error)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            self._error(ServingError("INVALID_ARGUMENT", f"Malformed request: {type(error).__name__}: {error}"))
        except RecursionError:
            self._error(ServingError("INVALID_ARGUMENT", "Malformed request: JSON nested too deep"))
        except Exception as error:  # never a dropped connection
            logging.exception("REST POST %s failed", self.path)
            self._reply(500, {"error": f"{type(error).__name__}: {error}"})

    def _post(self):
        match = _PATH.match(self.path)
        body = self._read_body()  # read before any reply, so the connection stays in step
        if not match or not match["verb"]:
            return self._reply(404, {"error": f"Malformed request: POST {self.path}"})
        servable = self._servable(match)
        signature_name = body.get("signature_name", "serving_default")
        if not isinstance(signature_name, str):
            raise ServingError("INVALID_ARGUMENT", "Malformed request: signature_name must be a string")
        if match["verb"] == "classify":
            examples = body.get("examples", [])
            if not isinstance(examples, list) or not all(isinstance(e, dict) for e in examples):
                raise ServingError("INVALID_ARGUMENT", 'Malformed request: "examples" must be a list of objects')
            results = classify(servable, signature_name, [_json_example(e) for e in examples])
            return self._reply(200, {"results": [[[label, _json_float(score)] for label, score in row]
                                                 for row in results]})
        if ("instances" in body) == ("inputs" in body):
            raise ServingError("INVALID_ARGUMENT", 'Request must have exactly one of "instances" or "inputs".')
        if signature_name not in servable.signature_defs:
            raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.')
        signature_inputs = servable.signature_defs[signature_name].inputs
        dtypes = {name: tf.as_dtype(info.dtype) for name, info in signature_inputs.items()}
        names = list(dtypes)

        def typed(name, value):
            if name not in dtypes:
                return np.asarray(0)  # predict() names the extra input
            return _json_input(name, value, dtypes[name])

        if "inputs" in body:
            columns = body["inputs"] if isinstance(body["inputs"], dict) else {names[0]: body["inputs"]}
            inputs = {k: typed(k, v) for k, v in columns.items()}
        else:
            rows = body["instances"]
            if not isinstance(rows, list):
                raise ServingError("INVALID_ARGUMENT", 'Malformed request: "instances" must be a list')
            if rows and isinstance(rows[0], dict) and not set(rows[0]) == {"b64"}:
                if not all(isinstance(r, dict) and set(r) == set(rows[0]) for r in rows):
                    raise ServingError("INVALID_ARGUMENT", "Malformed request: every instance must name the same "
                                       "inputs")
                inputs = {k: typed(k, [r[k] for r in rows]) for k in rows[0]}
            else:
                inputs = {names[0] if names else "inputs": typed(names[0] if names else "inputs", rows)}
        outputs = predict(servable, signature_name, inputs)
        if "inputs" in body:
            return self._reply(200, {"outputs": {k: _encode_json_value(k, v) for k, v in outputs.items()}})
        if len(outputs) == 1:
            (name, value), = outputs.items()
            return self._reply(200, {"predictions": _encode_json_value(name, value)})
        count = len(next(iter(outputs.values())))
        return self._reply(200, {"predictions": [{k: _encode_json_value(k, v[i:i + 1])[0] for k, v in outputs.items()}
                                                 for i in range(count)]})


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
