"""Serving the exported SavedModels over TF Serving's gRPC and REST APIs, and a client on the official stubs."""

from cleannet_tf.serving.client import Client
from cleannet_tf.serving.model_manager import ModelManager, ModelSpecConfig, ServingError, parse_model_config

__all__ = ["Client", "ModelManager", "ModelSpecConfig", "ServingError", "parse_model_config", "start_server"]


def start_server(*, model_config_file: str | None = None, model_name: str | None = None,
                 model_base_path: str | None = None, port: int = 8500, rest_port: int = 0, host: str = "127.0.0.1",
                 poll_seconds: float = 1.0, reload_roots: tuple[str, ...] = (),
                 monitoring_config_file: str | None = None, rest_idle_timeout: float | None = None):
    """Loads the models (a models.config, or one name + base path), starts gRPC (+ REST); returns the server.

    reload_roots: folders under which HandleReloadConfigRequest may load base paths (none: reload is refused).
    monitoring_config_file: a MonitoringConfig text proto; with prometheus_config enabled, the REST port serves
    the metrics at its path. rest_idle_timeout: seconds before an idle REST connection is closed.
    """
    import os

    from cleannet_tf.serving.metrics import Metrics, parse_monitoring_config
    from cleannet_tf.serving.server import DEFAULT_REST_IDLE_TIMEOUT, ModelServer
    from cleannet_tf.serving.signatures import replay_warmup

    metrics_path = None
    if monitoring_config_file:
        with open(monitoring_config_file) as f:
            metrics_path = parse_monitoring_config(f.read(), source=monitoring_config_file)
        if metrics_path and not rest_port:
            raise ValueError(f"{monitoring_config_file}: Prometheus metrics are served on the REST port: give "
                             "--rest_api_port too.")
    if model_config_file:
        with open(model_config_file) as f:
            models = parse_model_config(f.read(), source=model_config_file)
    elif model_name and model_base_path:
        models = [ModelSpecConfig(name=model_name, base_path=os.path.abspath(model_base_path))]
    else:
        raise ValueError("Give model_config_file, or model_name and model_base_path.")
    manager = ModelManager(models, warmup_runner=replay_warmup, poll_seconds=poll_seconds, metrics=Metrics())
    server = ModelServer(manager, port=port, rest_port=rest_port, host=host, reload_roots=reload_roots,
                         metrics_path=metrics_path, rest_idle_timeout=rest_idle_timeout or DEFAULT_REST_IDLE_TIMEOUT)
    server.start()
    return server
