"""Backbone registry: shapes, preprocessing, weights from files and classifiers."""

import keras
import numpy as np
import pytest

from cleannet_tf.features import backbones


@pytest.mark.parametrize("name, feature_dim", [("small_cnn", 256), ("resnet50", 2048), ("mobilenet_v3_small", 576),
                                               ("efficientnet_v2_b0", 1280), ("efficientnet_lite0", 1280)])
def test_registry_shapes(name, feature_dim):
    model = backbones.build_backbone(name, image_size=(64, 48))
    assert model.input.name == "image" and model.input_shape == (None, 64, 48, 3)
    assert model.output_names == ["features"] and backbones.feature_dim_of(model) == feature_dim
    features = model.predict(np.full((2, 64, 48, 3), 128.0, np.float32), verbose=0)["features"]
    assert features.shape == (2, feature_dim) and np.isfinite(features).all()


def test_small_cnn_feature_dim_and_non_negative():
    model = backbones.build_backbone("small_cnn", image_size=(32, 32), feature_dim=40)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    features = model.predict(images, verbose=0)["features"]
    assert features.shape == (4, 40) and (features >= 0).all()


def test_caffe_preprocessing_matches_keras_applications():
    images = np.random.default_rng(0).uniform(0, 255, (2, 5, 5, 3)).astype(np.float32)
    ours = backbones.ImagePreprocessing("caffe")(images)
    theirs = keras.applications.resnet50.preprocess_input(images.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), theirs, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown backbone"):
        backbones.build_backbone("vgg")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        backbones.build_backbone("small_cnn", weights="imagenet")
    with pytest.raises(ValueError, match="Only small_cnn takes feature_dim"):
        backbones.build_backbone("resnet50", feature_dim=12)
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        backbones.build_backbone("small_cnn", weights="/nowhere.weights.h5")


def _images(size):
    return np.random.default_rng(1).uniform(0, 255, (3, *size, 3)).astype(np.float32)


def test_weights_h5_round_trip(tmp_path):
    source = backbones.build_backbone("small_cnn", image_size=(32, 32))
    source.save_weights(tmp_path / "bb.weights.h5")
    loaded = backbones.build_backbone("small_cnn", image_size=(32, 32), weights=str(tmp_path / "bb.weights.h5"))
    np.testing.assert_array_equal(source.predict(_images((32, 32)), verbose=0)["features"],
                                  loaded.predict(_images((32, 32)), verbose=0)["features"])


def test_weights_from_trained_classifier_at_another_size(tmp_path):
    backbone = backbones.build_backbone("small_cnn", image_size=(32, 64))
    classifier = backbones.build_classifier(backbone, num_classes=5)
    classifier.compile(optimizer="sgd", loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    x = _images((32, 64))
    classifier.fit(x, {"logits": np.array([0, 1, 2])}, epochs=1, verbose=0)  # weights now differ from init
    classifier.save(tmp_path / "classifier.keras")
    for size in [(32, 64), (48, 48)]:
        loaded = backbones.build_backbone("small_cnn", image_size=size, weights=str(tmp_path / "classifier.keras"))
        for got, want in zip(loaded.get_weights(), backbone.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
    loaded = backbones.build_backbone("small_cnn", image_size=(32, 64), weights=str(tmp_path / "classifier.keras"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["features"], backbone.predict(x, verbose=0)["features"],
                               atol=1e-6)


def test_mismatched_classifier_names_file(tmp_path):
    classifier = backbones.build_classifier(backbones.build_backbone("small_cnn", feature_dim=32), num_classes=3)
    classifier.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match=r"other\.keras: its backbone does not match"):
        backbones.build_backbone("small_cnn", weights=str(tmp_path / "other.keras"))


def test_backbone_keras_round_trip(tmp_path):
    model = backbones.build_backbone("resnet50", image_size=(32, 32))
    model.save(tmp_path / "resnet.keras")
    loaded = keras.saving.load_model(tmp_path / "resnet.keras")
    x = _images((32, 32))
    np.testing.assert_allclose(model.predict(x, verbose=0)["features"], loaded.predict(x, verbose=0)["features"],
                               atol=1e-5)
