"""The backbone split where fine-tuning starts, and the frozen part's cache: what the whole network computes."""

import os

import keras
import numpy as np
import pytest

from cleannet_tf.features import backbones, block_cache
from cleannet_tf.features.store import FeatureStore

SIZE = (32, 32)


@pytest.fixture(scope="module")
def classifier():
    """EfficientNet-Lite0 (random weights; BatchNorm statistics those of random images, so the logits vary with
    the image) + a 3-class softmax."""
    keras.utils.set_random_seed(3)
    model = backbones.build_classifier(backbones.build_backbone("efficientnet_lite0", image_size=SIZE), 3)
    rng = np.random.default_rng(0)
    backbones.recompute_batchnorm_statistics(model, [rng.uniform(0, 255, (32, *SIZE, 3)).astype(np.float32)])
    return model


@pytest.fixture
def image_files(tmp_path, make_images):
    return make_images(tmp_path / "images", 10, size=SIZE)


def _decoded(paths):
    from cleannet_tf.data import images
    batch = next(iter(images.make_image_dataset(paths, image_size=SIZE, batch_size=len(paths))))
    return batch["image"].numpy()


@pytest.mark.parametrize("train_from", ["block0", "block3", "block5", "block11", "head", "logits"])
def test_trained_part_on_the_frozen_part_is_the_whole_classifier(classifier, image_files, train_from):
    backbone = classifier.get_layer("backbone")
    frozen = block_cache.build_frozen_part(backbone, train_from)
    trained = block_cache.build_trained_part(block_cache.output_shape(frozen), train_from, 3)
    copied = block_cache.copy_weights_by_name(classifier, trained)
    assert copied == sum(1 for layer in trained.layers if layer.weights)
    images = _decoded(image_files)
    whole = classifier(images, training=False)["logits"].numpy()
    split = trained(frozen(images)["frozen"], training=False)["logits"].numpy()
    np.testing.assert_allclose(split, whole, rtol=1e-4, atol=1e-4)
    assert whole.std(axis=0).min() > 1e-2  # the logits differ between images: not a comparison of constants


def test_set_trainable_from_leaves_exactly_the_trained_parts_weights_trainable(classifier):
    for train_from in ("block5", "head", "logits", "all"):
        block_cache.set_trainable_from(classifier, train_from)
        names = {v.path.split("/")[-2] for v in classifier.trainable_variables}
        if train_from == "all":
            assert len(classifier.trainable_variables) == len(classifier.get_layer("backbone").trainable_weights) + 2
            continue
        frozen = block_cache.build_frozen_part(classifier.get_layer("backbone"), train_from)
        trained = block_cache.build_trained_part(block_cache.output_shape(frozen), train_from, 3)
        assert names == {v.path.split("/")[-2] for v in trained.trainable_variables}
    block_cache.set_trainable_from(classifier, "all")


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float16", 2e-2)])
def test_cached_views_give_the_whole_classifier_on_the_image_and_its_mirror(classifier, image_files, tmp_path,
                                                                            dtype, tolerance, monkeypatch):
    monkeypatch.setattr(block_cache, "CACHE_BYTES_PER_SHARD", 4 * (2 * 2 * 80) * 4)  # shards of 4 rows
    backbone = classifier.get_layer("backbone")
    keys = np.array([os.path.basename(p) for p in image_files])
    kwargs = dict(keys=keys, paths=image_files, backbone=backbone, train_from="block8",
                  views=block_cache.VIEWS, settings={"test": 1}, image_size=SIZE, resize="squash", batch_size=4,
                  dtype=dtype, progress=False)
    cache = block_cache.fill_frozen_cache(str(tmp_path / "cache"), **kwargs)
    assert cache.shape == (2, 2, 80) and cache.stores["original"].num_shards == 3
    assert cache.stores["original"].dtype == np.dtype(dtype) and cache.valid().all()
    trained = block_cache.build_trained_part(cache.shape, "block8", 3)
    block_cache.copy_weights_by_name(classifier, trained)
    images = _decoded(image_files)
    views = np.array([0, 1] * 5)
    got = trained(cache.gather(np.arange(10), views).astype(np.float32), training=False)["logits"].numpy()
    mirrored = np.where(views[:, None, None, None] == 1, images[:, :, ::-1], images)
    expected = classifier(mirrored, training=False)["logits"].numpy()
    np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)
    assert not np.allclose(expected, classifier(images, training=False)["logits"].numpy(), atol=tolerance)

    # Resumable: a lost shard is recomputed, the others are read as they are.
    store = cache.stores["flipped"]
    before = store.gather(np.arange(10))
    os.remove(os.path.join(store.directory, "shard-00001.features.npy"))
    mtime = os.path.getmtime(os.path.join(store.directory, "shard-00000.features.npy"))
    again = block_cache.fill_frozen_cache(str(tmp_path / "cache"), **kwargs)
    np.testing.assert_array_equal(again.stores["flipped"].gather(np.arange(10)), before)
    assert os.path.getmtime(os.path.join(store.directory, "shard-00000.features.npy")) == mtime
    with pytest.raises(ValueError, match="another extractor"):
        block_cache.fill_frozen_cache(str(tmp_path / "cache"), **{**kwargs, "settings": {"test": 2}})


def test_float16_store_keeps_its_dtype_and_float32_manifests_stay_as_they_were(tmp_path):
    keys = np.array(["a", "b", "c"])
    half = FeatureStore.create_or_open(str(tmp_path / "half"), keys=keys, paths=keys, feature_dim=2, shard_size=2,
                                       extractor={}, dtype="float16")
    half.write_shard(0, np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([True, True]))
    half.write_shard(1, np.array([[5.0, 6.0]]), np.array([True]))
    assert half.finalize()["valid_rows"] == 3
    assert FeatureStore(half.directory).gather(np.array([2, 0])).dtype == np.float16
    full = FeatureStore.create_or_open(str(tmp_path / "full"), keys=keys, paths=keys, feature_dim=2, shard_size=2,
                                       extractor={})
    assert "dtype" not in full.manifest and full.dtype == np.float32
    with pytest.raises(ValueError, match="another dtype"):
        FeatureStore.create_or_open(str(tmp_path / "half"), keys=keys, paths=keys, feature_dim=2, shard_size=2,
                                    extractor={})
