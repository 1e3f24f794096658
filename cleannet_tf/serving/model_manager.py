"""Which SavedModel versions are served, as TF Serving decides it: models.config, version policies, polling.

A model is a base path whose integer-named children are versions (other names, e.g. an exporter's temporary
folder, are ignored). Policies: the latest N versions (default 1), all, or specific versions; version labels
map names to versions. A version is loaded with tf.saved_model.load and its assets.extra/tf_serving_warmup_requests
are replayed before it serves. A background thread polls the base paths every `poll_seconds`: new versions are
loaded first, and only then the map requests read is swapped (one assignment), so a request never meets a
half-loaded model.

Bad and half-written versions never take a model offline:
- A version folder is loaded only once it is complete and stable: saved_model.pb is present and the folder's
  file list, sizes and modification times are the same at two polls in a row. Publishers should still write a
  version under a temporary name that is not a number and rename it into the base path (one atomic rename;
  cleannet-export does so); the stability rule catches a plain `cp -r` caught half-way.
- A version whose load or warmup fails is not served; GetModelStatus reports it as END with the error's code and
  message (as tensorflow_model_server does). It is retried with exponential backoff (`retry_seconds`, doubling up
  to `max_retry_seconds`), and at once when its files change.
- Under the "latest N" policy the served versions are the N newest that load: a newer version that fails leaves
  the older one serving.

Imports `export`, `serving.metrics`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
import time

import grpc
import tensorflow as tf
from absl import logging

# ModelVersionStatus.State values of tensorflow_serving/apis/get_model_status.proto.
AVAILABLE, END = 30, 50
# google.rpc / tensorflow error codes (tensorflow_serving/apis/status.proto's error_code).
OK, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, DATA_LOSS = 0, 2, 3, 5, 15
from cleannet_tf.export.names import WARMUP_FILE  # noqa: E402
from cleannet_tf.serving.metrics import Metrics  # noqa: E402

ECHO_CHARS = 200  # the most of one request value an error message repeats
MAX_ERROR_CHARS = 2000  # the most of a whole error message


def shorten(value, limit: int = ECHO_CHARS) -> str:
    """str(value), cut to `limit` characters with "...(N characters)" when longer: request values in errors."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def bounded_message(message: str) -> str:
    """`message` with every run of more than ECHO_CHARS non-space characters (an echoed path, name or value)
    shortened, and at most MAX_ERROR_CHARS in all."""
    message = re.sub(rf"\S{{{ECHO_CHARS + 1},}}", lambda match: shorten(match.group()), str(message))
    return shorten(message, MAX_ERROR_CHARS)


class ServingError(Exception):
    """An error with the gRPC status code TF Serving answers with (a grpc.StatusCode name); its message is
    bounded (bounded_message): requests never get their own megabytes echoed back."""

    def __init__(self, code: str, message: str):
        message = bounded_message(message)
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass
class ModelSpecConfig:
    """One entry of models.config: name, base_path, policy ("latest", "all", "specific"), its numbers, labels."""

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Servable:
    name: str
    version: int
    path: str
    loaded: object
    signature_defs: dict  # signature name -> tensorflow.core.protobuf.meta_graph_pb2.SignatureDef

    def signature(self, name: str):
        return self.loaded.signatures[name]


def parse_model_config(text: str, *, source: str = "models.config") -> list[ModelSpecConfig]:
    """ModelServerConfig text proto -> [ModelSpecConfig]; a malformed file raises ValueError naming it."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise ValueError(f"{source}: {error}") from None
    return from_model_server_config(config)


def from_model_server_config(config) -> list[ModelSpecConfig]:
    """A ModelServerConfig proto -> [ModelSpecConfig]."""
    models = []
    for entry in config.model_config_list.config:
        policy = entry.model_version_policy.WhichOneof("policy_choice") or "latest"
        spec = ModelSpecConfig(name=entry.name, base_path=entry.base_path, policy=policy,
                               labels=dict(entry.version_labels))
        if policy == "latest":
            spec.num_versions = entry.model_version_policy.latest.num_versions or 1
        elif policy == "specific":
            spec.versions = tuple(entry.model_version_policy.specific.versions)
        models.append(spec)
    return models


def _signature_defs(path: str) -> dict:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return dict(proto.meta_graphs[0].signature_def)


def _version_dirs(base_path: str) -> list[int]:
    try:
        names = os.listdir(base_path)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(name) for name in names if name.isdigit() and os.path.isdir(os.path.join(base_path, name)))


def folder_fingerprint(path: str) -> tuple | None:
    """(relative path, size, mtime_ns) of every file under a version folder; None without saved_model.pb."""
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        return None
    entries = []
    for root, _, files in os.walk(path):
        for file in files:
            full = os.path.join(root, file)
            try:
                info = os.stat(full)
            except FileNotFoundError:  # removed while we looked: not stable
                return None
            entries.append((os.path.relpath(full, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


def _policy_allows(spec: ModelSpecConfig, version: int) -> bool:
    return spec.policy != "specific" or version in spec.versions


def _error_status(error: BaseException) -> tuple[int, str]:
    """(error_code, error_message) for a failed load, with the codes tensorflow_model_server uses."""
    if isinstance(error, tf.errors.OpError):
        return error.error_code, error.message
    if isinstance(error, ServingError):
        return getattr(grpc.StatusCode, error.code).value[0], error.message
    message = f"{type(error).__name__}: {error}"
    if isinstance(error, FileNotFoundError):
        return NOT_FOUND, message
    if isinstance(error, OSError) and "parse" in str(error).lower():
        return DATA_LOSS, message  # the real server: "Can't parse saved_model.pb as binary proto"
    return UNKNOWN, message


@dataclasses.dataclass
class _Failure:
    fingerprint: tuple
    attempts: int
    retry_at: float


class ModelManager:
    """Loads and serves the versions of every configured model; thread-safe for readers."""

    def __init__(self, models: list[ModelSpecConfig], *, warmup_runner=None, poll_seconds: float = 1.0,
                 retry_seconds: float | None = None, max_retry_seconds: float = 300.0,
                 metrics: Metrics | None = None):
        """warmup_runner(servable, record_bytes) replays one warmup record (raises on failure).
        metrics: counts every SavedModel load attempt (load_attempt_count); a new Metrics by default.

        retry_seconds: the first wait before a failed version is loaded again (default poll_seconds), doubled
        after each failure up to max_retry_seconds.
        """
        self._warmup_runner = warmup_runner
        self.metrics = metrics if metrics is not None else Metrics()
        self._poll_seconds = poll_seconds
        self._retry_seconds = poll_seconds if retry_seconds is None else retry_seconds
        self._max_retry_seconds = max_retry_seconds
        self._lock = threading.Lock()  # writers only; readers use the current snapshots
        self._config = {m.name: m for m in models}
        self._servables: dict[str, dict[int, Servable]] = {}
        self._status: dict[str, dict[int, tuple[int, int, str]]] = {}  # name -> version -> (state, code, message)
        self._seen: dict[tuple[str, int], tuple | None] = {}  # (name, version) -> fingerprint at the last poll
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._settle()

    def _settle(self) -> None:
        """Two looks at the folders one poll apart (a version must be stable to load), loading what is ready."""
        self.refresh()
        loaded = {(name, v) for name, versions in self._servables.items() for v in versions}
        if any(key not in loaded for key in self._seen):
            time.sleep(self._poll_seconds)
            self.refresh()

    # ------------------------------------------------------------------ loading
    def _load(self, spec: ModelSpecConfig, version: int) -> Servable:
        path = os.path.join(spec.base_path, str(version))
        start = time.perf_counter()
        try:
            loaded = tf.saved_model.load(path)
        except Exception:
            self.metrics.record_load(path, ok=False)
            raise
        self.metrics.record_load(path, ok=True)
        servable = Servable(spec.name, version, path, loaded, _signature_defs(path))
        warmup = os.path.join(path, WARMUP_FILE)
        records = 0
        if self._warmup_runner is not None and os.path.exists(warmup):
            for record in tf.data.TFRecordDataset(warmup):
                self._warmup_runner(servable, record.numpy())
                records += 1
        logging.info("Loaded %s version %d (%d warmup records) in %.2f s.", spec.name, version, records,
                     time.perf_counter() - start)
        return servable

    def _ready_versions(self, spec: ModelSpecConfig, loaded: dict[int, Servable]) -> list[int]:
        """Versions that may serve: loaded ones still on disk, and complete folders unchanged since the last poll."""
        ready = []
        for version in _version_dirs(spec.base_path):
            if version in loaded:
                ready.append(version)
                continue
            key = (spec.name, version)
            fingerprint = folder_fingerprint(os.path.join(spec.base_path, str(version)))
            if fingerprint is not None and self._seen.get(key) == fingerprint:
                ready.append(version)
            elif fingerprint is not None:
                logging.info("%s version %d: waiting for its folder to be complete and stable.", spec.name, version)
            self._seen[key] = fingerprint
        return [v for v in ready if _policy_allows(spec, v)]

    def _try_load(self, spec: ModelSpecConfig, version: int, loaded: dict[int, Servable],
                  states: dict[int, tuple[int, int, str]]) -> bool:
        """Loads one version into `loaded` unless it failed before and is not due for a retry; True if it serves."""
        key = (spec.name, version)
        fingerprint = self._seen.get(key)
        failure = self._failures.get(key)
        if failure is not None and failure.fingerprint == fingerprint and time.monotonic() < failure.retry_at:
            return False
        attempts = failure.attempts + 1 if failure is not None and failure.fingerprint == fingerprint else 1
        try:
            loaded[version] = self._load(spec, version)
        except Exception as error:  # a bad version must not take the server down, nor the version serving
            code, message = _error_status(error)
            delay = min(self._retry_seconds * 2 ** (attempts - 1), self._max_retry_seconds)
            self._failures[key] = _Failure(fingerprint, attempts, time.monotonic() + delay)
            logging.error("Could not load %s version %d (attempt %d; retrying in %.0f s, or when its files "
                          "change): %s", spec.name, version, attempts, delay, message)
            states[version] = (END, code, message)
            return False
        self._failures.pop(key, None)
        states[version] = (AVAILABLE, OK, "")
        return True

    def refresh(self) -> None:
        """One poll: loads the versions the policies want and can load; unloads the ones no longer wanted."""
        with self._lock:
            servables = {name: dict(versions) for name, versions in self._servables.items()
                         if name in self._config}
            status = {name: dict(versions) for name, versions in self._status.items() if name in self._config}
            for name, spec in self._config.items():
                loaded = servables.setdefault(name, {})
                states = status.setdefault(name, {})
                ready = self._ready_versions(spec, loaded)
                if spec.policy == "latest":  # the N newest versions that load
                    keep = []
                    for version in reversed(ready):
                        if len(keep) == spec.num_versions:
                            break
                        if version in loaded or self._try_load(spec, version, loaded, states):
                            keep.append(version)
                else:
                    keep = [v for v in ready if v in loaded or self._try_load(spec, v, loaded, states)]
                for version in list(loaded):
                    if version not in keep:
                        del loaded[version]
                        states[version] = (END, OK, "")
                        logging.info("Unloaded %s version %d.", name, version)
                on_disk = set(_version_dirs(spec.base_path))
                for key in [k for k in self._seen if k[0] == name and k[1] not in on_disk]:
                    self._seen.pop(key)
                    self._failures.pop(key, None)
            for key in [k for k in self._seen if k[0] not in self._config]:
                self._seen.pop(key)
                self._failures.pop(key, None)
            self._servables, self._status = servables, status  # the swap readers see

    def reload_config(self, models: list[ModelSpecConfig]) -> None:
        """Replaces the whole configuration (HandleReloadConfigRequest) and loads what it asks for."""
        with self._lock:
            self._config = {m.name: m for m in models}
        self._settle()

    def start_polling(self) -> None:
        def poll():
            while not self._stop.wait(self._poll_seconds):
                try:
                    self.refresh()
                except Exception as error:
                    logging.error("Polling the model folders failed: %s", error)

        self._thread = threading.Thread(target=poll, name="model-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ reading
    def model_names(self) -> list[str]:
        return list(self._config)

    def get(self, name: str, *, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a ModelSpec means; ServingError NOT_FOUND as TF Serving answers."""
        servables = self._servables.get(name)
        if name not in self._config or not servables:
            raise ServingError("NOT_FOUND", f"Servable not found for request: Latest({name})")
        if label:
            labels = self._config[name].labels
            if label not in labels:
                raise ServingError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
            version = labels[label]
        if version:
            if version not in servables:
                raise ServingError("NOT_FOUND", f"Servable not found for request: Specific({name}, {version})")
            return servables[version]
        return servables[max(servables)]

    def status(self, name: str, version: int | None = None) -> list[tuple[int, int, int, str]]:
        """[(version, state, error code, error message)] of a model; NOT_FOUND if it has none."""
        states = self._status.get(name, {})
        rows = [(v, state, code, message) for v, (state, code, message) in sorted(states.items())
                if version in (None, 0) or v == version]
        if name not in self._config or not rows:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return rows
