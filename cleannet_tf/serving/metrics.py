"""Operators' metrics as tensorflow_model_server exports them: --monitoring_config_file, Prometheus text format.

    metrics = Metrics()
    metrics.record_request("cleannet_verifier", "Predict", "GRPC", "OK", seconds=0.012)
    metrics.record_load("/models/cleannet_verifier/3", ok=True)
    metrics.exposition()   # the body served at the configured path on the REST port

The series, with TF Serving's names and labels (a metric's TensorFlow name with "/" written ":"):
- :tensorflow:serving:request_count{model_name, status}: counter; status is the gRPC code name ("OK",
  "INVALID_ARGUMENT", ...). Predict and Classify, gRPC and REST alike.
- :tensorflow:serving:request_latency{model_name, API, entrypoint}: histogram of microseconds, TF Serving's
  buckets (10 x 1.8^i, i < 33); API "Predict" or "Classify", entrypoint "GRPC" or "REST"; successful requests
  only, as TF Serving records it.
- :tensorflow:cc:saved_model:load_attempt_count{model_path, status}: counter; status "success" or "fail".

Label values are cut to 200 characters and each metric keeps at most MAX_SERIES label sets (a client naming
endless unknown models cannot grow it). Imports nothing of the package.
"""

from __future__ import annotations

import bisect
import threading

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's when prometheus_config.path is empty
LATENCY_BUCKETS_USEC = tuple(10.0 * 1.8 ** i for i in range(33))  # monitoring::Buckets::Exponential(10, 1.8, 33)
MAX_SERIES = 1000  # label sets per metric
_LABEL_CHARS = 200

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
_HELP = {REQUEST_COUNT: "The total number of requests.",
         REQUEST_LATENCY: "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
         LOAD_ATTEMPT_COUNT: "The number of times a SavedModel was successfully loaded."}


def _monitoring_config_class():
    """tensorflow.serving.MonitoringConfig (tensorflow_serving/config/monitoring_config.proto): the generated
    class when tensorflow-serving-api ships it, else the same two messages built from their descriptor."""
    try:
        from tensorflow_serving.config import monitoring_config_pb2

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="cleannet_tf/monitoring_config.proto",
                                              package="tensorflow.serving", syntax="proto3")
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def parse_monitoring_config(text: str, *, source: str = "monitoring_config") -> str | None:
    """A MonitoringConfig text proto -> the path Prometheus metrics are served at, or None if not enabled.

    Raises ValueError naming `source` (and the line and column) on a malformed file.
    """
    from google.protobuf import text_format

    config = _monitoring_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: {error}") from None
    if not config.prometheus_config.enable:
        return None
    path = config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH
    if not path.startswith("/"):
        raise ValueError(f"{source}: prometheus_config.path must start with '/'. Received {path!r}")
    return path


class Metrics:
    """Thread-safe counters and histograms, rendered in Prometheus's text exposition format 0.0.4."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, float]] = {REQUEST_COUNT: {}, LOAD_ATTEMPT_COUNT: {}}
        self._histograms: dict[tuple, list] = {}  # labels -> [bucket counts..., sum, count]
        self._label_names = {REQUEST_COUNT: ("model_name", "status"), LOAD_ATTEMPT_COUNT: ("model_path", "status"),
                             REQUEST_LATENCY: ("model_name", "API", "entrypoint")}

    @staticmethod
    def _labels(*values) -> tuple:
        return tuple(str(v)[:_LABEL_CHARS] for v in values)

    def _add(self, name: str, labels: tuple, amount: float = 1.0) -> None:
        series = self._counters[name]
        if labels in series or len(series) < MAX_SERIES:
            series[labels] = series.get(labels, 0.0) + amount

    def record_request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """One Predict or Classify request: its status code name ("OK", ...) and wall time."""
        with self._lock:
            self._add(REQUEST_COUNT, self._labels(model_name, status))
            if status != "OK":
                return
            labels = self._labels(model_name, api, entrypoint)
            if labels not in self._histograms and len(self._histograms) >= MAX_SERIES:
                return
            cells = self._histograms.setdefault(labels, [0] * (len(LATENCY_BUCKETS_USEC) + 1) + [0.0, 0])
            usec = seconds * 1e6
            cells[bisect.bisect_left(LATENCY_BUCKETS_USEC, usec)] += 1  # bucket i: (limit[i-1], limit[i]]
            cells[-2] += usec
            cells[-1] += 1

    def record_load(self, model_path: str, ok: bool) -> None:
        """One attempt to load the SavedModel at `model_path` (a version folder)."""
        with self._lock:
            self._add(LOAD_ATTEMPT_COUNT, self._labels(model_path, "success" if ok else "fail"))

    def exposition(self) -> str:
        """Every series in Prometheus's text format (# HELP, # TYPE, then one line per sample)."""
        lines = []
        with self._lock:
            for name in (REQUEST_COUNT, LOAD_ATTEMPT_COUNT):
                lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} counter"]
                for labels, value in sorted(self._counters[name].items()):
                    lines.append(f"{name}{{{_label_text(self._label_names[name], labels)}}} {_number(value)}")
            name = REQUEST_LATENCY
            lines += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} histogram"]
            for labels, cells in sorted(self._histograms.items()):
                text = _label_text(self._label_names[name], labels)
                cumulative = 0
                for limit, count in zip((*LATENCY_BUCKETS_USEC, float("inf")), cells[:-2], strict=True):
                    cumulative += count
                    lines.append(f'{name}_bucket{{{text},le="{_number(limit)}"}} {cumulative}')
                lines += [f"{name}_sum{{{text}}} {_number(cells[-2])}", f"{name}_count{{{text}}} {cells[-1]}"]
        return "\n".join(lines) + "\n"


def _label_text(names: tuple, values: tuple) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{name}="{escape(value)}"' for name, value in zip(names, values, strict=True))


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))
