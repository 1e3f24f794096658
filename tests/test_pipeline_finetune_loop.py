"""The paper's loop in cleannet-run with a fine-tuned classifier: features of the fine-tuned EfficientNet-Lite0 from
its frozen cache (as the whole forward gives them, resumable, the full forward where the cache does not fit), the
weighted fine-tunes on the same cache, and what reruns when the resolution or the first trained block changes."""

import os

import numpy as np
import pytest
from conftest import stand_in_lite0_weights, tiny_config

from cleannet_tf.features.extract import extract_features
from cleannet_tf.features.store import COMPLETE, FeatureStore
from cleannet_tf.pipeline import records, runner
from cleannet_tf.pipeline.artifacts import build_config_backbone
from cleannet_tf.pipeline.classifier import run_train_classifier
from cleannet_tf.pipeline.extract import run_extract
from cleannet_tf.pipeline.steps import STEPS
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import features_dir, frozen_cache_dir

SIZE = 32


@pytest.fixture
def loop_config(tmp_path, make_images):
    """60 random 32x32 images in a TSV (3 classes; 40 train, 8 val, 12 test; 30 with verification labels) and
    configs/tiny.py set to fine-tune EfficientNet-Lite0 (stand-in weights) from block 11 and extract with it."""
    paths = make_images(tmp_path / "data", 60, size=(SIZE, SIZE))
    splits = ["train"] * 40 + ["val"] * 8 + ["test"] * 12
    verified = ["1", "0", "1"] * 8 + [""] * 16 + ["1", "0"] * 4 + [""] * 12
    lines = ["path\tlabel\tverified\tsplit"] + [
        f"{os.path.basename(p)}\tclass{i % 3}\t{verified[i]}\t{splits[i]}" for i, p in enumerate(paths)]
    (tmp_path / "data" / "labels.tsv").write_text("\n".join(lines) + "\n")
    config = tiny_config({
        "data.format": "tsv", "data.root": str(tmp_path / "data" / "labels.tsv"),
        "model.backbone": "efficientnet_lite0", "model.weights": "classifier",
        "model.image_height": SIZE, "model.image_width": SIZE, "input.resize": "squash",
        "classifier.initial_weights": stand_in_lite0_weights(str(tmp_path / "backbone.weights.h5"), SIZE),
        "classifier.train_from": "block11", "classifier.frozen_cache": "on", "classifier.epochs": 1,
        "classifier.batch_size": 8, "classifier.after_verify": ("soft", "hard"), "extract.shard_size": 16,
        "refs.num_references": 4, "train.steps": 10, "train.eval_every": 5, "train.checkpoint_every": 5,
        "train.log_every": 5})
    return config, str(tmp_path / "work")


def _full_forward(config, workdir, table, directory):
    """Features of the fine-tuned classifier's whole backbone on the images (the uncached path)."""
    store = FeatureStore.create_or_open(directory, keys=table.keys, paths=table.paths, feature_dim=1280,
                                        shard_size=64, extractor={"full": True})
    extract_features(table.paths, store, build_config_backbone(config, workdir), image_size=(SIZE, SIZE),
                     batch_size=16, resize="squash", progress=False)
    store.finalize()
    return store.load_all()


def test_extract_from_the_frozen_cache_matches_the_full_forward_and_resumes(loop_config, tmp_path):
    config, workdir = loop_config
    table = load_table(config, workdir)
    run_train_classifier(config, workdir, table=table, progress=False)
    stats = run_extract(config, workdir, table=table, progress=False)
    assert stats.get("from_frozen_cache") and stats["shards_written"] == [0, 1, 2, 3]
    cached = FeatureStore(features_dir(workdir)).load_all()
    full = _full_forward(config, workdir, table, str(tmp_path / "full"))
    assert cached.shape == full.shape == (60, 1280) and np.abs(full).max() > 0.1
    # The cache holds float16 frozen outputs: equal to float16 rounding carried through blocks 11..15.
    np.testing.assert_allclose(cached, full, atol=0.02 * np.abs(full).max(), rtol=0.02)
    assert np.corrcoef(cached.ravel(), full.ravel())[0, 1] > 0.999

    # Resumable as the feature store: a lost shard is the only one computed again, to the same values.
    store = FeatureStore(features_dir(workdir))
    os.remove(os.path.join(store.directory, "shard-00002.features.npy"))
    os.remove(os.path.join(store.directory, COMPLETE))
    again = run_extract(config, workdir, table=table, progress=False)
    assert again["from_frozen_cache"] and again["shards_written"] == [2] and again["shards_done_before"] == 3
    np.testing.assert_array_equal(FeatureStore(features_dir(workdir)).load_all(), cached)

    # No cache (or one of other settings): the whole backbone on the images, exactly the full forward.
    for name in os.listdir(frozen_cache_dir(workdir)):
        os.rename(os.path.join(frozen_cache_dir(workdir), name), str(tmp_path / "moved_cache"))
    os.rename(features_dir(workdir), str(tmp_path / "old_features"))
    fallback = run_extract(config, workdir, table=table, progress=False)
    assert "from_frozen_cache" not in fallback and fallback["images"] == 60
    np.testing.assert_allclose(FeatureStore(features_dir(workdir)).load_all(), full, atol=1e-5, rtol=1e-5)


def test_loop_reruns_what_train_from_and_the_resolution_change(loop_config):
    config, workdir = loop_config
    steps = STEPS[:-1]  # export: SavedModels of three EfficientNets take long; its record is checked below
    first = runner.run_steps(config, workdir, steps=steps)
    steps = tuple(first)  # the plan step reports nothing once rows are verified (it plans a cold start only)
    assert all(not status.startswith("already") for status in first.values()), first
    keys = os.listdir(frozen_cache_dir(workdir))
    assert len(keys) == 1  # the noisy and both weighted fine-tunes share one frozen cache
    assert runner.run_steps(config, workdir, steps=steps) == {step: "already complete" for step in steps}

    # Another resolution: every step that depends on it is stale (nothing run here).
    taller = config.copy_and_resolve_references()
    taller.model.image_height = 40
    stale = {step: records.staleness(records.record_name(step, taller), taller, workdir) for step in steps}
    assert all(stale.values()), stale
    for weighting in ("soft", "hard"):
        weighted = records.with_weighting(taller, weighting)
        assert records.staleness(f"train_classifier_{weighting}", weighted, workdir)

    # Another first trained block: the classifiers, the features and everything after them run again;
    # the old settings' cache folder goes with the noisy classifier's rerun.
    later = config.copy_and_resolve_references()
    later.classifier.train_from = "block13"
    second = runner.run_steps(later, workdir, steps=steps)
    assert all("ran again" in second[step] for step in steps), second
    new_keys = os.listdir(frozen_cache_dir(workdir))
    assert len(new_keys) == 1 and new_keys != keys
    assert runner.run_steps(later, workdir, steps=steps) == {step: "already complete" for step in steps}
    assert records.staleness("export", later, workdir)  # never run: nothing says it is complete
    assert not records.step_complete("train_classifier", config, workdir)  # the old settings are stale now
