"""Benchmark: peak memory of the classifier's test-accuracy pass (training/classifier.py evaluate_accuracy), the
images through the whole backbone eagerly, at the old batch of 256 against IMAGE_EVAL_BATCH, in the same run.

    python -m benchmarks.eval_memory --backbone=efficientnet_lite0 --size=128 --images=1024

Each batch size runs in a process of its own (ru_maxrss is a process's peak); the images are JPEGs of noise
written to a temporary folder, the backbone has random weights (the peak does not depend on them). Measured on the
2-core machine (EfficientNet-Lite0, 128 px, 1024 images): batch 256 peaked at 7.9 GB, 64 at 2.7 GB, 32 at 1.7 GB,
at the same speed; a cleannet-run of configs/photos.py on 20k images grew from 2.4 to 9.0 GB at that pass.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_BACKBONE = flags.DEFINE_string("backbone", "efficientnet_lite0", "features/backbones.py BACKBONES key.")
_SIZE = flags.DEFINE_integer("size", 128, "Input height and width.")
_IMAGES = flags.DEFINE_integer("images", 1024, "Images evaluated.")
_BATCHES = flags.DEFINE_list("batches", ["256", "IMAGE_EVAL_BATCH"], "Batch sizes (IMAGE_EVAL_BATCH: the default).")


def measure(folder: str, backbone: str, size: int, batch: int) -> dict:
    """In this process: evaluate_accuracy over the JPEGs of `folder` -> peak RSS (GB), seconds, CPU seconds."""
    import numpy as np
    from ml_collections import ConfigDict

    from cleannet_tf.features import backbones
    from cleannet_tf.training.classifier import evaluate_accuracy

    model = backbones.build_classifier(backbones.build_backbone(backbone, image_size=(size, size)), 10)
    paths = np.array(sorted(os.path.join(folder, name) for name in os.listdir(folder)))
    config = ConfigDict({"input": {"resize": "squash", "parallel_calls": 0, "max_pixels": 40_000_000}})
    start, cpu = time.perf_counter(), time.process_time()
    evaluate_accuracy(model, paths, np.zeros(len(paths), np.int64), image_size=(size, size), config=config,
                      batch_size=batch)
    return {"batch": batch, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def main(argv) -> None:
    del argv
    import numpy as np
    from PIL import Image

    from cleannet_tf.training.classifier import IMAGE_EVAL_BATCH

    with tempfile.TemporaryDirectory(prefix="eval-memory-") as folder:
        rng = np.random.default_rng(0)
        for i in range(_IMAGES.value):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(os.path.join(folder, f"{i:05d}.jpg"))
        for batch in (IMAGE_EVAL_BATCH if b == "IMAGE_EVAL_BATCH" else int(b) for b in _BATCHES.value):
            code = ("import json, sys; from benchmarks.eval_memory import measure; "
                    f"print(json.dumps(measure({folder!r}, {_BACKBONE.value!r}, {_SIZE.value}, {batch})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            row = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{_BACKBONE.value} {_SIZE.value} px, {_IMAGES.value} images, batch {row['batch']:4d}: "
                  f"peak RSS {row['peak_rss_gb']:.2f} GB, {row['seconds']:.1f} s ({row['cpu_seconds']:.1f} CPU-s)")


if __name__ == "__main__":
    app.run(main)
