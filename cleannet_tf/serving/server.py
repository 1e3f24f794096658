"""A TF Serving-compatible server: gRPC PredictionService / ModelService and the REST API, on one ModelManager.

Implements Predict, Classify, GetModelMetadata, GetModelStatus and HandleReloadConfigRequest on the servicer
classes generated in `tensorflow-serving-api`, so the official stubs (and clients of the real
tensorflow_model_server) talk to it unchanged, with the real server's status codes: NOT_FOUND (unknown model
or version), FAILED_PRECONDITION (unknown signature), INVALID_ARGUMENT (inputs that do not match the
signature, bad image bytes, labels out of range). A failed request never stops the server.
HandleReloadConfigRequest answers PERMISSION_DENIED unless every base path lies under one of `reload_roots`
(cleannet-serve --allow_model_reload_under; none by default): it unloads the served models and runs new graphs.

    server = ModelServer(manager, port=8500, rest_port=8501)   # binds 127.0.0.1 by default
    server.start(); ...; server.stop()

The signatures run in serving/signatures.py, the REST front end is serving/rest.py. Imports `serving`,
`export.names` (through the client) and nothing else of the package.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from http.server import ThreadingHTTPServer

import grpc
import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cleannet_tf.export.names import MAX_MESSAGE_BYTES
from cleannet_tf.serving.model_manager import ModelManager, ServingError, from_model_server_config, shorten
from cleannet_tf.serving.rest import _RestHandler
from cleannet_tf.serving.signatures import _resolve, classify, predict, replay_warmup  # noqa: F401
from cleannet_tf.serving.tensor_proto import to_tensor_proto

# --------------------------------------------------------------------------- the calls, transport-free


# --------------------------------------------------------------------------- gRPC


def _abort(context, error: ServingError):
    context.abort(getattr(grpc.StatusCode, error.code), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def Predict(self, request, context):
        start = time.perf_counter()
        try:
            servable = _resolve(self.manager, request.model_spec)
            inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
            signature_name = request.model_spec.signature_name or "serving_default"
            outputs = predict(servable, signature_name, inputs, list(request.output_filter))
        except ServingError as error:
            return self._fail(context, "Predict", request, start, error)
        except Exception as error:  # malformed tensors and the like: the request fails, the server stays
            return self._fail(context, "Predict", request, start,
                              ServingError("INVALID_ARGUMENT", f"{type(error).__name__}: {shorten(error)}"))
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(to_tensor_proto(value))
        self._count("Predict", request, start, "OK")
        return response

    def _count(self, api: str, request, start: float, status: str) -> None:
        self.manager.metrics.record_request(request.model_spec.name, api, "GRPC", status,
                                            time.perf_counter() - start)

    def _fail(self, context, api: str, request, start: float, error: ServingError):
        self._count(api, request, start, error.code)
        return _abort(context, error)

    def Classify(self, request, context):
        start = time.perf_counter()
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
            return self._fail(context, "Classify", request, start, error)
        except Exception as error:  # the request fails, the server stays
            return self._fail(context, "Classify", request, start,
                              ServingError("INVALID_ARGUMENT", f"{type(error).__name__}: {shorten(error)}"))
        response = classification_pb2.ClassificationResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for row in results:
            classifications = response.result.classifications.add()
            for label, score in row:
                classifications.classes.add(label=label, score=score)
        self._count("Classify", request, start, "OK")
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


def reload_refusal(models, reload_roots: tuple[str, ...]) -> str | None:
    """Why HandleReloadConfigRequest may not load `models` ([ModelSpecConfig]), or None if every base path
    lies under one of `reload_roots` (symbolic links resolved). No roots: reloading is off."""
    if not reload_roots:
        return ("Model reload is off: start cleannet-serve with --allow_model_reload_under=DIR to accept "
                "HandleReloadConfigRequest for base paths under DIR.")
    roots = [os.path.realpath(root) for root in reload_roots]
    for model in models:
        path = os.path.realpath(model.base_path)
        if not os.path.isabs(model.base_path) or not any(os.path.commonpath([root, path]) == root for root in roots):
            return (f"Model {shorten(model.name)!r}: base_path {shorten(model.base_path)!r} is not under "
                    f"--allow_model_reload_under ({', '.join(roots)}).")
    return None


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager, reload_roots: tuple[str, ...] = ()):
        self.manager = manager
        self.reload_roots = tuple(reload_roots)

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
        models = from_model_server_config(request.config)
        refusal = reload_refusal(models, self.reload_roots)
        if refusal is not None:  # any local user can reach the port: loading a SavedModel runs its graph
            logging.warning("HandleReloadConfigRequest refused: %s", refusal)
            return _abort(context, ServingError("PERMISSION_DENIED", refusal))
        try:
            self.manager.reload_config(models)
        except Exception as error:
            response.status.error_code = 3  # INVALID_ARGUMENT
            response.status.error_message = str(error)
        return response


# --------------------------------------------------------------------------- REST (TF Serving's JSON API)

# --------------------------------------------------------------------------- the server


DEFAULT_REST_IDLE_TIMEOUT = 30.0  # seconds; http.server's default is never


class ModelServer:
    """gRPC (and optionally REST) on a ModelManager. Binds `host` (127.0.0.1 by default)."""

    def __init__(self, manager: ModelManager, *, port: int = 8500, rest_port: int = 0, host: str = "127.0.0.1",
                 max_workers: int = 16, reload_roots: tuple[str, ...] = (), metrics_path: str | None = None,
                 rest_idle_timeout: float = DEFAULT_REST_IDLE_TIMEOUT):
        """reload_roots: HandleReloadConfigRequest is accepted only for base paths under these folders (none: off).
        metrics_path: where the REST port serves manager.metrics in Prometheus's format (None: nowhere).
        rest_idle_timeout: seconds a REST connection may sit idle (or stall mid-request) before it is closed.
        """
        if metrics_path and not rest_port:
            raise ValueError("Prometheus metrics are served on the REST port: give a REST port with them.")
        self.manager = manager
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(manager),
                                                                            self.grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, reload_roots),
                                                                  self.grpc_server)
        self.port = self.grpc_server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"Could not bind gRPC to {host}:{port}.")
        self.rest_server = None
        self.rest_port = 0
        if rest_port:
            handler = type("RestHandler", (_RestHandler,), {"manager": manager, "metrics_path": metrics_path,
                                                            "timeout": rest_idle_timeout})
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
