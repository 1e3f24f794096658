"""Feature extraction: store == model.predict, mirrored == default, resume after a kill."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import kill_at_marker

from cleannet_tf import config as config_lib
from cleannet_tf.data import images as data_images
from cleannet_tf.features import backbones, extract
from cleannet_tf.features.store import FeatureStore
from cleannet_tf.pipeline.extract import run_extract

IMAGE_SIZE = (32, 32)


@pytest.fixture
def image_paths(tmp_path, make_images):
    paths = make_images(tmp_path / "imgs", 45)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    paths[7] = str(tmp_path / "bad.jpg")
    paths[30] = str(tmp_path / "gone.jpg")
    return paths


def _extract(paths, directory, strategy=None, shard_size=16, batch_size=8):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        keras.utils.set_random_seed(0)
        backbone = backbones.build_backbone("small_cnn", image_size=IMAGE_SIZE)
    store = FeatureStore.create_or_open(str(directory), keys=paths, paths=paths, feature_dim=256,
                                        shard_size=shard_size, extractor={"test": 1})
    stats = extract.extract_features(paths, store, backbone, image_size=IMAGE_SIZE, batch_size=batch_size,
                                         strategy=strategy, progress=False)
    return store, backbone, stats


def test_store_equals_model_predict(tmp_path, image_paths):
    store, backbone, stats = _extract(image_paths, tmp_path / "features")
    assert store.complete and store.num_shards == 3
    assert stats["unreadable_rows"] == [7, 30] and stats["images"] == 43
    readable = np.setdiff1d(np.arange(45), [7, 30])
    images = np.stack([data_images.decode_image(tf.io.read_file(image_paths[i]), IMAGE_SIZE).numpy()
                       for i in readable])
    expected = backbone.predict(images, verbose=0)["features"]
    np.testing.assert_allclose(store.load_all()[readable], expected, atol=1e-5)
    np.testing.assert_array_equal(np.nonzero(~store.valid())[0], [7, 30])
    # Plain numpy reads the store too.
    shard = np.load(os.path.join(store.directory, "shard-00001.features.npy"))
    np.testing.assert_array_equal(shard, store.load_all()[16:32])
    np.testing.assert_array_equal(store.gather(np.array([40, 3, 17])), store.load_all()[[40, 3, 17]])


def test_mirrored_two_devices_equals_default(tmp_path, image_paths):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    # batch 6 over 45 rows leaves a last batch of 3: uneven replica split.
    store_m, _, _ = _extract(image_paths, tmp_path / "mirrored", strategy=mirrored, batch_size=6)
    store_d, _, _ = _extract(image_paths, tmp_path / "default", batch_size=6)
    np.testing.assert_allclose(store_m.load_all(), store_d.load_all(), atol=1e-5)
    np.testing.assert_array_equal(store_m.valid(), store_d.valid())


def test_resume_redoes_only_unfinished_shards(tmp_path, image_paths):
    store, _, _ = _extract(image_paths, tmp_path / "features")
    full = store.load_all()
    os.remove(os.path.join(store.directory, "shard-00001.features.npy"))
    kept = os.path.join(store.directory, "shard-00000.features.npy")
    before = os.stat(kept).st_mtime_ns
    store, _, stats = _extract(image_paths, tmp_path / "features")
    assert stats["shards_done_before"] == 2 and stats["images"] == 15  # row 30 is unreadable
    assert os.stat(kept).st_mtime_ns == before
    np.testing.assert_allclose(store.load_all(), full, atol=1e-5)


def test_store_of_other_extractor_is_refused(tmp_path, image_paths):
    _extract(image_paths, tmp_path / "features")
    with pytest.raises(ValueError, match=r"manifest\.json: the feature store there was made with another extractor"):
        FeatureStore.create_or_open(str(tmp_path / "features"), keys=image_paths, paths=image_paths, feature_dim=256,
                                    shard_size=16, extractor={"test": 2})


def _write_tsv(tmp_path, make_images, count):
    paths = make_images(tmp_path / "data", count, size=(64, 64))
    lines = ["path\tlabel"] + [f"{os.path.basename(p)}\tclass{i % 3}" for i, p in enumerate(paths)]
    (tmp_path / "data" / "labels.tsv").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "data" / "labels.tsv")


def _cli(tsv, workdir, *extra, shard_size=64):
    return [sys.executable, "-m", "cleannet_tf.cli.extract", f"--workdir={workdir}", "--config.data.format=tsv",
            f"--config.data.root={tsv}", "--config.model.backbone=small_cnn", "--config.model.weights=random",
            "--config.model.image_height=96", "--config.model.image_width=96",
            f"--config.extract.shard_size={shard_size}",
            "--config.extract.batch_size=16", "--config.runtime.strategy=default", *extra]


def _stopping_after_shard(command, marker, shard: int = 1):
    """`command` (python -m cleannet_tf.cli.extract ...): waits, to be killed, once `shard` is written."""
    script = f"""
import os, sys, time
sys.argv = ["cleannet-extract", *{command[3:]!r}]  # before the flags are defined (config_flags reads them then)
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if str(dst).endswith("shard-{shard:05d}.features.npy"):
        open({str(marker)!r}, "w").close()
        time.sleep(600)
os.replace = replace
from cleannet_tf.cli import extract
extract.run()
"""
    return [sys.executable, "-c", script]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, make_images):
    tsv = _write_tsv(tmp_path, make_images, 640)
    workdir = tmp_path / "killed"
    features = workdir / "features"
    marker = tmp_path / "after_shard_1"
    kill_at_marker(_stopping_after_shard(_cli(tsv, workdir), marker), marker, "shard 1")
    finished = sorted(p.name for p in features.glob("shard-*.features.npy"))
    assert "shard-00001.features.npy" in finished and len(finished) < 10  # killed with shards left to do
    mtimes = {name: os.stat(features / name).st_mtime_ns for name in finished}

    subprocess.run(_cli(tsv, workdir), check=True, capture_output=True)
    store = FeatureStore(str(features))
    assert store.complete
    for name, mtime in mtimes.items():  # finished shards were kept, not redone
        assert os.stat(features / name).st_mtime_ns == mtime

    # The same run, uninterrupted. Random-init weights are seeded by config.seed.
    subprocess.run(_cli(tsv, tmp_path / "clean"), check=True, capture_output=True)
    np.testing.assert_allclose(store.load_all(), FeatureStore(str(tmp_path / "clean" / "features")).load_all(),
                               atol=1e-5)


def test_run_extract_skipped_with_precomputed_features(tmp_path):
    config = config_lib.default_config()
    config.data.features = str(tmp_path / "f.npz")
    assert run_extract(config, str(tmp_path)) == {"skipped": True}


def test_worker_task_from_flags_or_tf_config():
    assert extract.worker_task(environ={}) == (0, 1)
    assert extract.worker_task(2, 3, environ={}) == (2, 3)
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"], "ps": ["h3:1"]}
    for task, expected in (({"type": "chief", "index": 0}, (0, 3)), ({"type": "worker", "index": 1}, (2, 3))):
        environ = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        assert extract.worker_task(environ=environ) == expected
        assert extract.worker_task(0, 1, environ=environ) == (0, 1)  # flags win
    with pytest.raises(ValueError, match="'ps' does not extract"):
        extract.worker_task(environ={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "ps"}})})
    with pytest.raises(ValueError, match="TF_CONFIG is not a JSON"):
        extract.worker_task(environ={"TF_CONFIG": "{not json"})
    with pytest.raises(ValueError, match="both"):
        extract.worker_task(1, None, environ={})
    with pytest.raises(ValueError, match="task_index=3, num_tasks=3"):
        extract.worker_task(3, 3, environ={})


def test_task_shards_split_every_shard_once(tmp_path):
    keys = np.arange(100).astype(str)
    store = FeatureStore.create_or_open(str(tmp_path), keys=keys, paths=keys, feature_dim=2, shard_size=9,
                                        extractor={})  # 12 shards
    for num_tasks in (1, 2, 5, 12, 15):
        blocks = [store.task_shards(i, num_tasks) for i in range(num_tasks)]
        assert sum(blocks, []) == list(range(12))  # contiguous, in order, each shard once
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_workers_in_process_fill_one_store(tmp_path, image_paths):
    full, _, _ = _extract(image_paths, tmp_path / "one")
    assert full.finalize() == {"num_rows": 45, "num_shards": 3, "valid_rows": 43} and full.finalized
    store = FeatureStore.create_or_open(str(tmp_path / "two"), keys=image_paths, paths=image_paths, feature_dim=256,
                                        shard_size=16, extractor={"test": 1})
    with tf.distribute.get_strategy().scope():
        keras.utils.set_random_seed(0)
        backbone = backbones.build_backbone("small_cnn", image_size=IMAGE_SIZE)
    for task in (1, 0):
        stats = extract.extract_features(image_paths, store, backbone, image_size=IMAGE_SIZE, batch_size=8,
                                             progress=False, shards=store.task_shards(task, 2))
        assert stats["shards_written"] == store.task_shards(task, 2)  # [0, 1] and [2]
        if task == 1:
            assert store.unfinished_shards() == [0, 1] and store.finalize() is None and not store.finalized
    assert store.finalize()["valid_rows"] == 43
    np.testing.assert_allclose(store.load_all(), full.load_all(), atol=1e-5)
    np.testing.assert_array_equal(store.valid(), full.valid())


def test_two_worker_processes_equal_one_and_resume_after_sigkill(tmp_path, make_images):
    tsv = _write_tsv(tmp_path, make_images, 320)
    features = tmp_path / "two" / "features"  # 20 shards of 16 rows: worker 0 owns 0-9, worker 1 owns 10-19
    tf_config = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}
    worker0 = subprocess.Popen(_cli(tsv, tmp_path / "two", shard_size=16), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)))
    worker1_cli = _cli(tsv, tmp_path / "two", "--task_index=1", "--num_tasks=2", shard_size=16)
    marker = tmp_path / "after_shard_10"
    kill_at_marker(_stopping_after_shard(worker1_cli, marker, 10), marker, "shard 10")  # worker 1's first shard
    assert worker0.wait(timeout=300) == 0
    finished = sorted(int(p.name[6:11]) for p in features.glob("shard-*.features.npy"))
    assert finished[:10] == list(range(10)) and 10 in finished  # worker 0's block, and worker 1's first shard
    assert len(finished) < 20, "worker 1 finished before the kill"  # worker 0 wrote none of worker 1's shards
    assert not (features / "complete.json").exists()
    mtimes = {s: os.stat(features / f"shard-{s:05d}.features.npy").st_mtime_ns for s in finished}

    subprocess.run(worker1_cli, check=True, capture_output=True)  # the restarted worker 1 finishes the store
    record = json.loads((features / "complete.json").read_text())
    assert record == {"num_rows": 320, "num_shards": 20, "valid_rows": 320}
    for shard, mtime in mtimes.items():  # finished shards (both workers') were kept, not redone
        assert os.stat(features / f"shard-{shard:05d}.features.npy").st_mtime_ns == mtime
    assert not list(features.glob("*tmp*"))

    subprocess.run(_cli(tsv, tmp_path / "one", shard_size=16), check=True, capture_output=True)  # one process
    one = FeatureStore(str(tmp_path / "one" / "features"))
    assert one.finalized
    two = FeatureStore(str(features))
    np.testing.assert_allclose(two.load_all(), one.load_all(), atol=1e-5)
    np.testing.assert_array_equal(two.valid(), one.valid())


def test_config_max_pixels_reaches_extraction(tmp_path, make_images):
    small = make_images(tmp_path / "data", 4, size=(32, 32), seed=1)  # 1024 pixels
    large = make_images(tmp_path / "data" / "big", 2, size=(40, 60), seed=2)  # 2400 pixels
    lines = ["path\tlabel"] + [f"{os.path.relpath(p, tmp_path / 'data')}\tclass{i % 2}"
                               for i, p in enumerate([*small, *large])]
    (tmp_path / "data" / "labels.tsv").write_text("\n".join(lines) + "\n")
    config = config_lib.default_config()
    config.data.format, config.data.root = "tsv", str(tmp_path / "data" / "labels.tsv")
    config.model.backbone, config.model.weights = "small_cnn", "random"
    config.model.image_height = config.model.image_width = 32
    config.extract.batch_size, config.extract.shard_size = 4, 4
    config.input.max_pixels = 2000
    stats = run_extract(config_lib.validate(config), str(tmp_path / "work"), progress=False)
    assert stats["too_large_rows"] == [4, 5] and stats["images"] == 4
    config.input.max_pixels = 2400  # exactly at the limit: read
    stats = run_extract(config_lib.validate(config), str(tmp_path / "work2"), progress=False)
    assert stats["too_large_rows"] == [] and stats["images"] == 6
