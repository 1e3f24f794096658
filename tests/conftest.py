"""Test setup: two logical CPU devices before TensorFlow initialises.

MirroredStrategy tests then run on `/cpu:0` and `/cpu:1` on machines without GPUs.
"""

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL  # noqa: E402


@pytest.fixture
def make_images():
    """Writes `count` random RGB images (JPEG, or PNG every third) under `directory`; returns their paths."""

    def make(directory, count, size=(30, 40), seed=0):
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        paths = []
        for i in range(count):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            path = directory / (f"img{i:04d}.png" if i % 3 == 2 else f"img{i:04d}.jpg")
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
        return np.array(paths)

    return make


def write_feature_dataset(directory, *, num_classes=6, per_class=150, feature_dim=24, noise_rate=0.2,
                          verified_fraction=0.4, val_fraction=0.2, heldout=(), spread=0.8, seed=0):
    """A TSV dataset with precomputed features (.npz) of planted clusters and known label noise.

    Returns (config overrides dict, true labels (N,), noisy labels (N,)). No images
    are written: `data.check_images` is off and `data.features` replaces extraction.
    """
    rng = np.random.default_rng(seed)
    n = num_classes * per_class
    true = np.repeat(np.arange(num_classes), per_class)
    noisy = true.copy()
    flipped = rng.permutation(n)[: int(round(noise_rate * n))]
    noisy[flipped] = (true[flipped] + rng.integers(1, num_classes, len(flipped))) % num_classes
    centres = rng.gamma(1.0, 1.0, (num_classes, feature_dim)) * 3
    features = np.maximum(centres[true] + rng.normal(0, spread, (n, feature_dim)), 0).astype(np.float32)
    role = rng.random(n)
    lines = ["path\tlabel\tverified\tsplit"]
    keys = []
    for i in range(n):
        key = f"img{i:05d}.jpg"
        keys.append(key)
        verified, split = "", "train"
        if role[i] < val_fraction:
            verified, split = str(int(noisy[i] == true[i])), "val"
        elif role[i] < val_fraction + verified_fraction and noisy[i] not in heldout:
            verified = str(int(noisy[i] == true[i]))
        lines.append(f"{key}\tclass{noisy[i]}\t{verified}\t{split}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "labels.tsv").write_text("\n".join(lines) + "\n")
    np.savez(directory / "features.npz", keys=np.array(keys), features=features)
    overrides = {"data.format": "tsv", "data.root": str(directory / "labels.tsv"),
                 "data.features": str(directory / "features.npz"), "data.check_images": False}
    if heldout:
        names = "\n".join(f"class{c}\t{0 if c in heldout else 1}" for c in range(num_classes))
        (directory / "heldout.txt").write_text("class\tkeep\n" + names + "\n")
        overrides["data.heldout_list"] = str(directory / "heldout.txt")
    return overrides, true, noisy


def kill_at_marker(command, marker, what: str, *, timeout: float = 240) -> int:
    """Runs `command` (a process that touches `marker` and then waits), SIGKILLs it once `marker` exists.

    Returns the process id (its temporary files carry it). Fails, naming `what`, if the marker never appears.
    """
    import signal
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"the process did not reach {what} (exit code {process.poll()})"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return process.pid


TINY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "tiny.py")


def resume_then_run_clean(config, workdir: str, table, clean: str, *, last: int, steps_per_epoch: int):
    """Resumes the killed soft-weighted classifier step of `workdir` (its last checkpoint at step `last`) and runs
    it uninterrupted in `clean` from the same verify/ outputs -> (resumed metrics.json, uninterrupted
    metrics.json, resumed model, uninterrupted model)."""
    import json
    import shutil

    import keras

    from cleannet_tf.pipeline import runner

    runner.run_step("train_classifier", config, workdir, table=table)
    resumed = json.load(open(os.path.join(workdir, "classifier_soft", "metrics.json")))
    assert resumed["history"][0]["epoch"] == last // steps_per_epoch + 1  # this run started at the checkpoint
    shutil.copytree(os.path.join(workdir, "verify"), os.path.join(clean, "verify"))
    runner.run_step("train_classifier", config, clean, table=table)
    uninterrupted = json.load(open(os.path.join(clean, "classifier_soft", "metrics.json")))
    return (resumed, uninterrupted, keras.saving.load_model(os.path.join(workdir, "classifier_soft", "model.keras")),
            keras.saving.load_model(os.path.join(clean, "classifier_soft", "model.keras")))


def flat_fields(config, prefix=""):
    """("section.field", value) of every leaf field of a (nested) config, in order."""
    for name, value in config.items():
        if hasattr(value, "items"):
            yield from flat_fields(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def stand_in_lite0_weights(path: str, size: int) -> str:
    """Stands in for EfficientNet-Lite0's ImageNet weights (no download): random weights whose BatchNorm statistics
    are those of random size x size images (a freshly initialised network's activations grow without bound, making
    every comparison ill-conditioned). Saved to `path` (.weights.h5); returns it."""
    import keras

    from cleannet_tf.features import backbones

    keras.utils.set_random_seed(5)
    backbone = backbones.build_backbone("efficientnet_lite0", image_size=(size, size))
    images = np.random.default_rng(0).uniform(0, 255, (32, size, size, 3)).astype(np.float32)
    backbones.recompute_batchnorm_statistics(backbone, [images])
    backbone.save_weights(path)
    return path


def tiny_config(settings: dict):
    """configs/tiny.py (the one tiny config) with `section.name` -> value settings on top, validated."""
    import runpy

    from cleannet_tf import config as config_lib

    config = runpy.run_path(TINY_CONFIG)["get_config"]()
    for field, value in settings.items():
        section, name = field.split(".")
        config[section][name] = value
    return config_lib.validate(config)


def small_train_config(overrides, **extra):
    """A validated config for fast CleanNet training on a feature dataset: configs/tiny.py, the dataset's
    overrides and `extra` on top."""
    return tiny_config({**overrides, **extra})


# --------------------------------------------------------------------------- headless Chromium

NO_BROWSER_VARIABLE = "CLEANNET_NO_BROWSER"


def chromium_paths(*, driver: bool = False) -> tuple[str, str | None]:
    """(chromium, chromedriver or None) on PATH, for the report's and cleannet-review's browser tests.

    A missing one fails the test (CI installs both: .ci/run); only CLEANNET_NO_BROWSER=1, set by hand,
    skips the browser tests instead.
    """
    import shutil

    if os.environ.get(NO_BROWSER_VARIABLE) == "1":
        pytest.skip(f"{NO_BROWSER_VARIABLE}=1: the browser tests are switched off")
    found = {"chromium": shutil.which("chromium") or shutil.which("chromium-browser")}
    if driver:
        found["chromedriver"] = shutil.which("chromedriver")
    missing = [name for name, path in found.items() if not path]
    if missing:
        pytest.fail(f"no {' or '.join(missing)} on PATH: install Debian's chromium and chromium-driver (.ci/run "
                    f"does), or set {NO_BROWSER_VARIABLE}=1 to skip the browser tests", pytrace=False)
    return found["chromium"], found.get("chromedriver")


# --------------------------------------------------------------------------- dataset trees on disk

_buffer = io.BytesIO()
Image.new("RGB", (8, 8), (200, 30, 30)).save(_buffer, format="JPEG")
JPEG_BYTES = _buffer.getvalue()


def write_jpeg(path) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(JPEG_BYTES)


def write_lines(path, lines, *, crlf: bool = False) -> None:
    """Writes `lines` (str), one per line; crlf=True uses Windows line endings."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(("\r\n" if crlf else "\n").join(lines) + ("\r\n" if crlf else "\n"))


# --------------------------------------------------------------------------- Food-101N fixture

FOOD_CLASSES = ["apple_pie", "baklava", "ramen"]
# imagelist.tsv: header (line 1), then these (lines 2..10).
FOOD_KEYS = [f"{c}/{c[0]}{i}.jpg" for c in FOOD_CLASSES for i in range(3)]
FOOD_VERIFIED_TRAIN = [("apple_pie/a0.jpg", 1), ("apple_pie/a1.jpg", 0), ("baklava/b0.jpg", 1), ("ramen/r0.jpg", 1)]
FOOD_VERIFIED_VAL = [("apple_pie/a2.jpg", 1), ("ramen/r1.jpg", 0)]


def make_food101n(root, *, keys=None, verified_train=None, verified_val=None, test=None, test_dir=None,
                  crlf: bool = False, images: bool = True):
    """Writes a Food-101N release tree; returns its root (str).

    test: optional test.txt lines (`class/key`); their images go under test_dir
    (default ROOT/test) as <class>/<key>.jpg.
    """
    root = str(root)
    keys = FOOD_KEYS if keys is None else keys
    verified_train = FOOD_VERIFIED_TRAIN if verified_train is None else verified_train
    verified_val = FOOD_VERIFIED_VAL if verified_val is None else verified_val
    meta = os.path.join(root, "meta")
    write_lines(os.path.join(meta, "classes.txt"), ["class_name", *FOOD_CLASSES], crlf=crlf)
    write_lines(os.path.join(meta, "imagelist.tsv"), ["class_name/key", *keys], crlf=crlf)
    for name, rows in (("train", verified_train), ("val", verified_val)):
        write_lines(os.path.join(meta, f"verified_{name}.tsv"),
                    ["class_name/key\tverification_label", *(f"{k}\t{v}" for k, v in rows)], crlf=crlf)
    if images:
        for key in keys:
            write_jpeg(os.path.join(root, "images", key))
    if test is not None:
        write_lines(os.path.join(meta, "test.txt"), test, crlf=crlf)
        test_dir = test_dir or os.path.join(root, "test")
        for name in test:
            write_jpeg(os.path.join(test_dir, f"{name}.jpg"))
    return root


# --------------------------------------------------------------------------- Clothing1M fixture

CLOTHING_CLASSES = ["T-Shirt", "Shirt", "Down Coat"]
CLOTHING_NOISY = {"n0": 0, "n1": 1, "n2": 2, "n3": 0, "n4": 1, "c0": 1, "c2": 2}
CLOTHING_CLEAN = {"n0": 0, "n1": 2, "n3": 1, "c0": 1, "c1": 0, "c2": 0, "c3": 2, "t0": 2}
CLOTHING_LISTS = {
    "noisy_train_key_list.txt": ["n0", "n1", "n2", "n3", "n4"],
    "clean_train_key_list.txt": ["n0", "c0", "c1"],
    "clean_val_key_list.txt": ["n1", "c2", "c3"],
    "clean_test_key_list.txt": ["n3", "t0"],
}


def clothing_key(name: str) -> str:
    return f"images/{len(name)}/{name[0]}0/{name}.jpg"


def make_clothing1m(root, *, subdir: str = "", noisy=None, clean=None, lists=None, images: bool = True):
    """Writes a Clothing1M release tree (annotation files in ROOT/subdir); returns its root (str)."""
    root = str(root)
    noisy = CLOTHING_NOISY if noisy is None else noisy
    clean = CLOTHING_CLEAN if clean is None else clean
    lists = {**CLOTHING_LISTS, **(lists or {})}
    annotations = os.path.join(root, subdir)
    write_lines(os.path.join(annotations, "category_names_eng.txt"), CLOTHING_CLASSES)
    write_lines(os.path.join(annotations, "noisy_label_kv.txt"), [f"{clothing_key(k)} {v}" for k, v in noisy.items()])
    write_lines(os.path.join(annotations, "clean_label_kv.txt"), [f"{clothing_key(k)} {v}" for k, v in clean.items()])
    for name, names in lists.items():
        write_lines(os.path.join(annotations, name), [clothing_key(k) for k in names])
    if images:
        for name in set(noisy) | set(clean):
            write_jpeg(os.path.join(root, clothing_key(name)))
    return root


CLOTHING_EXPECTED = [  # name, label, verification, split
    ("n0", 0, 1, SPLIT_TRAIN), ("n1", 1, 0, SPLIT_VAL), ("n2", 2, -1, SPLIT_TRAIN), ("n4", 1, -1, SPLIT_TRAIN),
    ("c0", 1, 1, SPLIT_TRAIN), ("c2", 2, 0, SPLIT_VAL), ("n3", 1, -1, SPLIT_TEST), ("t0", 2, -1, SPLIT_TEST),
]


# --------------------------------------------------------------------------- generic TSV

def make_tsv(folder, lines, *, images=(), crlf: bool = False) -> str:
    """Writes folder/data.tsv with `lines` and the JPEGs `images` (paths relative to folder); returns the tsv path."""
    path = os.path.join(str(folder), "data.tsv")
    write_lines(path, lines, crlf=crlf)
    for image in images:
        write_jpeg(os.path.join(str(folder), image))
    return path



# --------------------------------------------------------------------------- a model server on loopback

@pytest.fixture(scope="session")
def published_models(tmp_path_factory):
    """Five images (4 JPEG, 1 PNG) and the verifier and classifier SavedModels (version 1,
    tests/serving_helpers.py), built once: (images, export_dir, models)."""
    from serving_helpers import _publish

    root = tmp_path_factory.mktemp("serving")
    rng = np.random.default_rng(0)
    images = []
    for i in range(5):
        path = root / f"img{i}.{'png' if i == 4 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
        images.append(path.read_bytes())
    export_dir = str(root / "saved_models")
    models = _publish(export_dir, images)
    return images, export_dir, models


@pytest.fixture(scope="module")
def served(published_models, tmp_path_factory):
    """A model server on loopback over a copy of published_models of its own (one per test module: tests may
    publish new versions into it)."""
    import shutil

    from cleannet_tf.export import savedmodel
    from cleannet_tf.serving import Client, start_server

    images, published, models = published_models
    export_dir = str(tmp_path_factory.mktemp("served") / "saved_models")
    shutil.copytree(published, export_dir)
    savedmodel.write_models_config(export_dir)  # the copy's base paths
    server = start_server(model_config_file=os.path.join(export_dir, "models.config"), port=0, rest_port=0,
                          poll_seconds=0.2)
    client = Client(f"127.0.0.1:{server.port}")
    yield {"export_dir": export_dir, "images": images, "models": models, "server": server, "client": client}
    client.close()
    server.stop(grace=1)


# --------------------------------------------------------------------------- cleannet-review

@pytest.fixture
def workdir(tmp_path):
    """cleannet-review's small workdir (tests/review_helpers.py): (config .py path, workdir, config)."""
    from review_helpers import make_workdir

    return make_workdir(tmp_path)


@pytest.fixture
def server(workdir):
    """A ReviewServer (with a Retrainer) on loopback over `workdir`: (server, workdir path)."""
    import json

    from cleannet_tf.review import retrain as retrain_lib
    from cleannet_tf.review.server import ReviewServer
    from cleannet_tf.review.session import ReviewSession

    _, work, config = workdir
    session = ReviewSession(config, work, user="tester")
    retrainer = retrain_lib.Retrainer(config, work, read_metrics=lambda w: json.load(
        open(os.path.join(w, "verify", "metrics.json"))), on_finished=lambda ok: ok and session.reload())
    server = ReviewServer(session, retrainer).start()
    yield server, work
    server.stop()


@pytest.fixture
def browser(tmp_path):
    chromium, chromedriver = chromium_paths(driver=True)  # missing: a failure, unless CLEANNET_NO_BROWSER=1
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    yield driver
    driver.quit()
