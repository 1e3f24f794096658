"""Extraction throughput: files -> feature store, against model.predict on in-memory tensors.

    python benchmarks/extraction.py                      # small_cnn and resnet50
    python benchmarks/extraction.py --backbones=resnet50 --images=512

For each backbone, the same images are (a) extracted from JPEG files on disk by
`extract_lib.extract_features` (tf.data decode + resize, shards written) and (b)
decoded once into memory and fed to `model.predict`. The ratio a/b shows
whether the input pipeline is the bottleneck (goal: >= 0.8). Images are
smooth synthetic photos-like JPEGs of Food-101N's size (short side 320).
"""

import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

from cleannet_tf.data import images as data_images
from cleannet_tf.features import backbones, extract
from cleannet_tf.features.store import FeatureStore

_BACKBONES = flags.DEFINE_list("backbones", ["small_cnn", "resnet50"], "Backbones to time.")
_IMAGES = flags.DEFINE_integer("images", 0, "Images per backbone (0: 4096 for small_cnn, 256 for the others).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Global batch size.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed runs of each mode; the best is kept.")

_SIZES = {"small_cnn": ((32, 32), 4096), "resnet50": ((224, 224), 256), "mobilenet_v3_small": ((224, 224), 512),
          "efficientnet_v2_b0": ((224, 224), 256)}


def _write_jpegs(directory: str, count: int, seed: int = 0) -> np.ndarray:
    """Smooth random images (like photos, unlike white noise, in JPEG size) of 320 x 320..480."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        width = int(rng.integers(320, 481))
        coarse = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, 320), Image.BICUBIC)
        path = os.path.join(directory, f"{i:06d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return np.array(paths)


def _best_of(repeats: int, run) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def bench(name: str, paths: np.ndarray, image_size, batch_size: int, repeats: int, workdir: str) -> dict:
    backbone = backbones.build_backbone(name, image_size=image_size)
    feature_dim = backbones.feature_dim_of(backbone)
    count = len(paths)

    def pipeline_run():
        directory = tempfile.mkdtemp(dir=workdir)
        store = FeatureStore.create_or_open(directory, keys=paths, paths=paths, feature_dim=feature_dim,
                                            shard_size=2048, extractor={"bench": name})
        extract.extract_features(paths, store, backbone, image_size=image_size, batch_size=batch_size,
                                     progress=False)

    images = np.stack([data_images.decode_image(tf.io.read_file(p), image_size).numpy() for p in paths])
    backbone.predict(images[:batch_size], batch_size=batch_size, verbose=0)  # build predict function
    pipeline_run()  # warm-up: traces the step function
    predict_seconds = _best_of(repeats, lambda: backbone.predict(images, batch_size=batch_size, verbose=0))
    pipeline_seconds = _best_of(repeats, pipeline_run)
    return {"backbone": name, "images": count, "size": f"{image_size[0]}x{image_size[1]}",
            "pipeline": count / pipeline_seconds, "predict": count / predict_seconds,
            "ratio": predict_seconds / pipeline_seconds}


def main(argv):
    del argv
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, devices: "
          f"{[d.name for d in tf.config.list_logical_devices()]}")
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in _BACKBONES.value:
            image_size, default_count = _SIZES[name]
            image_dir = tempfile.mkdtemp(dir=workdir)
            paths = _write_jpegs(image_dir, _IMAGES.value or default_count)
            rows.append(bench(name, paths, image_size, _BATCH.value, _REPEATS.value, workdir))
            print(rows[-1], flush=True)
    print()
    print("| backbone | input | images | extract from files (images/s) | model.predict in memory (images/s) | ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['size']} | {r['images']} | {r['pipeline']:.1f} | {r['predict']:.1f} "
              f"| {r['ratio']:.2f} |")


if __name__ == "__main__":
    app.run(main)
