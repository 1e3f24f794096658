"""cleannet-serve: TF Serving's gRPC API (and REST) over the exported SavedModels.

    cleannet-serve --model_config_file=saved_models/models.config --port=8500 --rest_api_port=8501
    cleannet-serve --model_name=cleannet_verifier --model_base_path=saved_models/cleannet_verifier

Reads: the SavedModels cleannet-export wrote (integer-named version folders; new versions are picked up
while serving).
Writes: nothing; serves TF Serving's PredictionService/ModelService gRPC API on --port and its REST API on
--rest_api_port; prints "READY grpc=<port> rest=<port>" once listening.
The flags are tensorflow_model_server's for the same jobs. Serves until SIGTERM or SIGINT, then lets running
requests finish. Binds 127.0.0.1 unless --host says otherwise. Errors print one line and exit 1; --debug
adds the traceback.

Imports `serving`.
"""

import signal
import threading

import tensorflow as tf
from absl import app, flags, logging

from cleannet_tf import serving
from cleannet_tf.cli import flags as cli_flags

_PORT = flags.DEFINE_integer("port", 8500, "gRPC port (0: any free port).")
_REST_PORT = flags.DEFINE_integer("rest_api_port", 0, "REST port (0: no REST).")
_CONFIG = flags.DEFINE_string("model_config_file", None, "A ModelServerConfig text proto (models.config).")
_NAME = flags.DEFINE_string("model_name", None, "One model's name (with --model_base_path).")
_BASE = flags.DEFINE_string("model_base_path", None, "One model's base path (integer-named version folders).")
_POLL = flags.DEFINE_float("file_system_poll_wait_seconds", 1.0, "How often to look for new versions.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind (0.0.0.0 for every interface).")
_RELOAD_ROOTS = flags.DEFINE_multi_string(
    "allow_model_reload_under", [],
    "Accept gRPC HandleReloadConfigRequest (which unloads the served models and loads others) for base paths "
    "under this folder; repeat for several. Unset: every reload is refused with PERMISSION_DENIED (any local "
    "user can reach the port, and a SavedModel's graph runs with the server's rights).")
_MONITORING = flags.DEFINE_string(
    "monitoring_config_file", None,
    'A MonitoringConfig text proto, as tensorflow_model_server reads it: prometheus_config { enable: true, '
    'path: "/monitoring/prometheus/metrics" } serves request counts, request latency and SavedModel load '
    "attempts in Prometheus's format at that path on --rest_api_port.")
_REST_IDLE = flags.DEFINE_float(
    "rest_api_idle_timeout_seconds", 30.0,
    "Seconds a REST connection may sit idle (or stall in the middle of a request) before the server closes it.",
    lower_bound=0.001)
_INTRA_OP = flags.DEFINE_integer(
    "tensorflow_intra_op_parallelism", 0,
    "Threads of one op (0: TensorFlow's default, one per core). 1 lowers the latency of small models on few "
    "cores (benchmarks/serving.py).")
_INTER_OP = flags.DEFINE_integer("tensorflow_inter_op_parallelism", 0,
                                 "Ops run in parallel (0: TensorFlow's default).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    # Before any model loads: TensorFlow fixes its thread pools at first use.
    tf.config.threading.set_intra_op_parallelism_threads(_INTRA_OP.value)
    tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP.value)
    try:
        server = serving.start_server(model_config_file=_CONFIG.value, model_name=_NAME.value,
                                      model_base_path=_BASE.value, port=_PORT.value, rest_port=_REST_PORT.value,
                                      host=_HOST.value, poll_seconds=_POLL.value,
                                      reload_roots=tuple(_RELOAD_ROOTS.value),
                                      monitoring_config_file=_MONITORING.value,
                                      rest_idle_timeout=_REST_IDLE.value)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"READY grpc={server.port} rest={server.rest_port}", flush=True)
    while not stop.wait(0.5):
        pass
    logging.info("Shutting down.")
    server.stop()


def run():
    cli_flags.run(main, pipeline_flags=False)


if __name__ == "__main__":
    run()
