"""TF Serving's REST API (/v1/models/...: status, metadata, labels, :predict, :classify) over http.server.

JSON values follow TF Serving's rules (b64 bytes, row and column formats). Imports `serving.signatures`.
"""

from __future__ import annotations

import base64
import json
import re
import time
from http.server import BaseHTTPRequestHandler

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
)

from cleannet_tf.export.names import MAX_MESSAGE_BYTES
from cleannet_tf.serving.model_manager import ModelManager, Servable, ServingError, shorten
from cleannet_tf.serving.signatures import _CODE_NAMES, _STATE_NAMES, classify, predict

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
    converted = array.astype(dtype.as_numpy_dtype)
    if dtype.is_floating and array.size:
        overflow = np.isfinite(array) & ~np.isfinite(converted)  # e.g. 1e39 for a float32 input
        if overflow.any():
            raise ServingError("INVALID_ARGUMENT", f"JSON value of input {name!r} is out of range for {dtype.name}: "
                               f"{float(array.reshape(-1)[np.argmax(overflow.reshape(-1))])!r} (largest "
                               f"{float(np.finfo(dtype.as_numpy_dtype).max):.7g})")
    return converted


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
    metrics_path: str | None = None  # GET: manager.metrics in Prometheus's text format
    timeout: float | None = None  # socket timeout: an idle (or stalled) connection is closed after it
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        logging.debug("REST " + format, *args)

    def _reply(self, status: int, payload: dict | str) -> None:
        """A JSON body, or (a str payload) plain text."""
        text = isinstance(payload, str)
        body = payload.encode() if text else json.dumps(payload, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8" if text else "application/json")
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
            logging.exception("REST GET %s failed", shorten(self.path))
            self._error(ServingError("INTERNAL", f"{type(error).__name__}: {error}"))

    def _get(self):
        if self.metrics_path and self.path.split("?", 1)[0] == self.metrics_path:
            return self._reply(200, self.manager.metrics.exposition())
        match = _PATH.match(self.path)
        if not match or match["verb"]:
            return self._error(ServingError("NOT_FOUND", f"Malformed request: GET {self.path}"))
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
        start, status = time.perf_counter(), "OK"
        try:
            self._post()
        except ServingError as error:
            status = error.code
            self._error(error)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            status = "INVALID_ARGUMENT"
            self._error(ServingError("INVALID_ARGUMENT", f"Malformed request: {type(error).__name__}: {error}"))
        except RecursionError:
            status = "INVALID_ARGUMENT"
            self._error(ServingError("INVALID_ARGUMENT", "Malformed request: JSON nested too deep"))
        except TimeoutError:  # the body stalled for `timeout` seconds: answer, then close
            status, self.close_connection = "DEADLINE_EXCEEDED", True
            self._reply(408, {"error": f"Request timed out: the body stalled for {self.timeout} s"})
        except Exception as error:  # never a dropped connection
            status = "INTERNAL"
            logging.exception("REST POST %s failed", shorten(self.path))
            self._error(ServingError("INTERNAL", f"{type(error).__name__}: {error}"))
        finally:
            match = _PATH.match(self.path)
            if match and match["verb"]:  # TF Serving's API names: Predict, Classify
                self.manager.metrics.record_request(match["name"], match["verb"].capitalize(), "REST", status,
                                                    time.perf_counter() - start)

    def _post(self):
        match = _PATH.match(self.path)
        body = self._read_body()  # read before any reply, so the connection stays in step
        if not match or not match["verb"]:
            return self._error(ServingError("NOT_FOUND", f"Malformed request: POST {self.path}"))
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
            if not rows:
                raise ServingError("INVALID_ARGUMENT", 'Malformed request: "instances" is empty; send at least '
                                   "one instance")
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
