"""Running a servable's signatures, shared by the gRPC and the REST front ends: predict, classify, warmup replay.

Errors are ServingError with a TF Serving status code and one plain line. Imports `serving.model_manager`.
"""

from __future__ import annotations

import codecs
import re

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    prediction_log_pb2,
)

from cleannet_tf.serving.model_manager import ModelManager, Servable, ServingError

_STATE_NAMES = {10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


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


def _resolve(manager: ModelManager, model_spec) -> Servable:
    version = model_spec.version.value if model_spec.HasField("version") else None
    return manager.get(model_spec.name, version=version, label=model_spec.version_label or None)


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
