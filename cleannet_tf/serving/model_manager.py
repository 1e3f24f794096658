"""Which SavedModel versions are served, as TF Serving decides it: models.config, version policies, polling.

A model is a base path whose integer-named children are versions (other names, e.g. an exporter's temporary
folder, are ignored). Policies: the latest N versions (default 1), all, or specific versions; version labels
map names to versions. A version is loaded with tf.saved_model.load and its assets.extra/tf_serving_warmup_requests
are replayed before it serves; a version whose load or warmup fails is not served (its status says why).
A background thread polls the base paths every `poll_seconds`: new versions are loaded first, and only then
the map requests read is swapped (one assignment), so a request never meets a half-loaded model.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import tensorflow as tf
from absl import logging

# ModelVersionStatus.State values of tensorflow_serving/apis/get_model_status.proto.
AVAILABLE, END = 30, 50
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


class ServingError(Exception):
    """An error with the gRPC status code TF Serving answers with (a grpc.StatusCode name)."""

    def __init__(self, code: str, message: str):
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


def _versions_on_disk(base_path: str) -> list[int]:
    try:
        names = os.listdir(base_path)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names
                  if name.isdigit() and os.path.exists(os.path.join(base_path, name, "saved_model.pb")))


def wanted_versions(spec: ModelSpecConfig) -> list[int]:
    on_disk = _versions_on_disk(spec.base_path)
    if spec.policy == "all":
        return on_disk
    if spec.policy == "specific":
        return [v for v in on_disk if v in spec.versions]
    return on_disk[-spec.num_versions:]


class ModelManager:
    """Loads and serves the versions of every configured model; thread-safe for readers."""

    def __init__(self, models: list[ModelSpecConfig], *, warmup_runner=None, poll_seconds: float = 1.0):
        """warmup_runner(servable, record_bytes) replays one warmup record (raises on failure)."""
        self._warmup_runner = warmup_runner
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()  # writers only; readers use the current snapshots
        self._config = {m.name: m for m in models}
        self._servables: dict[str, dict[int, Servable]] = {}
        self._status: dict[str, dict[int, tuple[int, str]]] = {}  # name -> version -> (state, error message)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    # ------------------------------------------------------------------ loading
    def _load(self, spec: ModelSpecConfig, version: int) -> Servable:
        path = os.path.join(spec.base_path, str(version))
        start = time.perf_counter()
        servable = Servable(spec.name, version, path, tf.saved_model.load(path), _signature_defs(path))
        warmup = os.path.join(path, WARMUP_FILE)
        records = 0
        if self._warmup_runner is not None and os.path.exists(warmup):
            for record in tf.data.TFRecordDataset(warmup):
                self._warmup_runner(servable, record.numpy())
                records += 1
        logging.info("Loaded %s version %d (%d warmup records) in %.2f s.", spec.name, version, records,
                     time.perf_counter() - start)
        return servable

    def refresh(self) -> None:
        """Loads versions the policies want and are not loaded; drops the ones they no longer want."""
        with self._lock:
            servables = {name: dict(versions) for name, versions in self._servables.items()
                         if name in self._config}
            status = {name: dict(versions) for name, versions in self._status.items() if name in self._config}
            for name, spec in self._config.items():
                current = servables.setdefault(name, {})
                states = status.setdefault(name, {})
                wanted = wanted_versions(spec)
                for version in wanted:
                    state, message = states.get(version, (0, ""))
                    if version in current or (state == END and message):  # failed versions are not retried
                        continue
                    try:
                        current[version] = self._load(spec, version)
                        states[version] = (AVAILABLE, "")
                    except Exception as error:  # a bad version must not take the server down
                        logging.error("Could not load %s version %d: %s", name, version, error)
                        states[version] = (END, f"{type(error).__name__}: {error}")
                for version in list(current):
                    if version not in wanted:
                        del current[version]
                        states[version] = (END, "")
            self._servables, self._status = servables, status  # the swap readers see

    def reload_config(self, models: list[ModelSpecConfig]) -> None:
        """Replaces the whole configuration (HandleReloadConfigRequest) and loads what it asks for."""
        with self._lock:
            self._config = {m.name: m for m in models}
        self.refresh()

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

    def status(self, name: str, version: int | None = None) -> list[tuple[int, int, str]]:
        """[(version, state, error message)] of a model; NOT_FOUND if it has none."""
        states = self._status.get(name, {})
        rows = [(v, state, message) for v, (state, message) in sorted(states.items())
                if version in (None, 0) or v == version]
        if name not in self._config or not rows:
            raise ServingError("NOT_FOUND", f"Could not find any versions of model {name}")
        return rows
