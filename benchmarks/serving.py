"""Benchmark: online verification through cleannet-serve's gRPC API against the same signature in-process.

    python benchmarks/serving.py --export_dir=/tmp/cleannet_demo/saved_models \
        --images=/tmp/cleannet_demo/demo_data/images

Starts `python -m cleannet_tf.cli.serve` on the export folder in its own process (as in production), then for the
verifier's `verify_features` (one feature vector) and `serving_default` (one JPEG + label) prints:
- single-request latency p50 / p99 over sequential calls with the official PredictionServiceStub, and the same
  signature called in-process (tf.saved_model.load) — the overhead ratio;
- requests/s and images/s with 1, 8 and 32 concurrent clients (one channel each; batch 1 and batch 8);
for each server setting of --server_settings (default: TensorFlow's thread pools, then one thread per op).
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from cleannet_tf.serving import Client  # noqa: E402

_EXPORT_DIR = flags.DEFINE_string("export_dir", "/tmp/cleannet_demo/saved_models", "cleannet-export's folder.")
_IMAGES = flags.DEFINE_string("images", "/tmp/cleannet_demo/demo_data/images", "A folder of JPEGs (searched deep).")
_REQUESTS = flags.DEFINE_integer("requests", 300, "Sequential requests per latency measurement.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Duration of each throughput measurement.")
_SETTINGS = flags.DEFINE_list("server_settings", ["", "--tensorflow_intra_op_parallelism=1"],
                              "cleannet-serve flags to compare, one server run each ('' = defaults).")
MODEL = "cleannet_verifier"


def percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1e3), float(np.percentile(seconds, 99) * 1e3)


def time_calls(call, count: int) -> list[float]:
    for _ in range(10):
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def throughput(make_call, clients: int, seconds: float) -> float:
    """Requests per second of `clients` threads, each calling its own make_call() result in a loop."""
    calls = [make_call() for _ in range(clients)]
    counts = [0] * clients
    stop = threading.Event()

    def worker(i):
        while not stop.is_set():
            calls[i]()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def main(argv) -> None:
    del argv
    export_dir = _EXPORT_DIR.value
    paths = sorted(glob.glob(os.path.join(_IMAGES.value, "**", "*.jpg"), recursive=True))[:64]
    if not paths:
        raise app.UsageError(f"No JPEGs under {_IMAGES.value}")
    images = [open(p, "rb").read() for p in paths]
    versions = sorted(int(v) for v in os.listdir(os.path.join(export_dir, MODEL)) if v.isdigit())
    loaded = tf.saved_model.load(os.path.join(export_dir, MODEL, str(versions[-1])))
    feature_dim = int(loaded.signatures["verify_features"].structured_input_signature[1]["features"].shape[-1])
    features = np.abs(np.random.default_rng(0).normal(size=(8, feature_dim))).astype(np.float32)

    local_features = loaded.signatures["verify_features"]
    local_images = loaded.signatures["serving_default"]
    cases = {
        "verify_features": (
            lambda c, b=1: c.verify_features(features[:b], [0] * b),
            lambda b=1: local_features(features=tf.constant(features[:b]), label=tf.zeros([b], tf.int64))),
        "image bytes (serving_default)": (
            lambda c, b=1: c.verify_image(images[:b], [0] * b),
            lambda b=1: local_images(image_bytes=tf.constant(images[:b]), label=tf.zeros([b], tf.int64))),
    }
    local_p50 = {name: percentiles(time_calls(local, _REQUESTS.value))[0] for name, (_, local) in cases.items()}
    print(f"{MODEL} version {versions[-1]}, feature dim {feature_dim}, {len(images)} JPEGs of "
          f"{np.mean([len(b) for b in images]) / 1024:.1f} KiB; in-process p50 (this process, TensorFlow's "
          f"default threads): " + ", ".join(f"{name} {value:.2f} ms" for name, value in local_p50.items()))
    for setting in _SETTINGS.value:
        benchmark_server(export_dir, setting, cases, local_p50)


def benchmark_server(export_dir: str, setting: str, cases: dict, local_p50: dict) -> None:
    process = subprocess.Popen([sys.executable, "-m", "cleannet_tf.cli.serve",
                                f"--model_config_file={export_dir}/models.config", "--port=0",
                                *([setting] if setting else [])],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        while "READY" not in line:
            line = process.stdout.readline()
            if process.poll() is not None:
                raise RuntimeError("cleannet-serve did not start")
        target = f"127.0.0.1:{int(line.split('grpc=')[1].split()[0])}"
        print(f"\ncleannet-serve {setting or '(default flags)'} on {target}")
        client = Client(target)
        print(f"{'signature':<30} {'gRPC p50':>9} {'gRPC p99':>9} {'in-proc p50':>12} {'ratio':>6}")
        for name, (remote, _) in cases.items():
            grpc_p50, grpc_p99 = percentiles(time_calls(lambda remote=remote: remote(client), _REQUESTS.value))
            print(f"{name:<30} {grpc_p50:>7.2f}ms {grpc_p99:>7.2f}ms {local_p50[name]:>10.2f}ms "
                  f"{grpc_p50 / local_p50[name]:>6.1f}", flush=True)
        print(f"{'signature':<30} {'clients':>7} {'batch':>5} {'requests/s':>11} {'images/s':>9}")
        for name, (remote, _) in cases.items():
            for batch in (1, 8):
                for clients in (1, 8, 32):
                    def make_call(remote=remote, batch=batch):
                        own = Client(target)
                        return lambda: remote(own, batch)

                    rate = throughput(make_call, clients, _SECONDS.value)
                    print(f"{name:<30} {clients:>7} {batch:>5} {rate:>11.0f} {rate * batch:>9.0f}", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    app.run(main)
