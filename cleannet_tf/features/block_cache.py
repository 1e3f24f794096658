"""Fine-tuning from a block on: the backbone split where training starts, and the frozen part's outputs on disk.

`train_from` (config.classifier.train_from) names the first trained part of EfficientNet-Lite0:

    all        every layer (nothing frozen, nothing cached)
    block<k>   MBConv blocks k..15 (k in 0..15), the head conv and the softmax; the stem and blocks < k frozen
    head       the head conv (1x1, 1280 channels) and the softmax
    logits     the softmax only (the frozen features' linear classifier)

The frozen part (`build_frozen_part`) maps an image to the input of the first trained block; the trained part
(`build_trained_part`) maps that to the logits, with layers named as in the whole classifier so weights move
between the two by name (`copy_weights_by_name`). Frozen layers run in inference mode (BatchNormalization with
its ImageNet statistics) whether they are cached or not, so a cached epoch computes what the uncached one does.

The cache (`fill_frozen_cache`, `FrozenCache`): the frozen part's output of every table row, flattened into a
`FeatureStore` (sharded, resumable, float16 by default), one store per view: "original", and "flipped" (the
image mirrored left-right before the frozen part) when training augments with flips. Random crops and
RandAugment change the frozen part's input every epoch and cannot be cached.

Imports `data`, `features`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from cleannet_tf.features import efficientnet_lite
from cleannet_tf.features.extract import extract_features
from cleannet_tf.features.store import FeatureStore

SPLIT_BACKBONES = ("efficientnet_lite0",)  # backbones train_from may split
TRAIN_FROM = ("all", *(f"block{k}" for k in range(len(efficientnet_lite.BLOCKS))), "head", "logits")
VIEWS = ("original", "flipped")
CACHE_BYTES_PER_SHARD = 1 << 27  # a shard's float32 buffer while it is extracted: 128 MiB


def first_trained_block(train_from: str) -> int:
    """The index of the first trained MBConv block: k for "block<k>", 16 (none) for "head"."""
    if train_from == "head":
        return len(efficientnet_lite.BLOCKS)
    if train_from not in TRAIN_FROM or not train_from.startswith("block"):
        raise ValueError(f"train_from must be one of {TRAIN_FROM[1:]} to split the backbone. Received: {train_from!r}")
    return int(train_from[len("block"):])


def frozen_output_layer(train_from: str) -> str:
    """The backbone layer whose output is the frozen part's output (the first trained layer's input)."""
    if train_from == "logits":
        return "features"
    first = first_trained_block(train_from)
    if first == 0:
        return "stem_relu6"
    expand, _, stride, filters = efficientnet_lite.BLOCKS[first - 1]
    in_filters = efficientnet_lite.BLOCKS[first - 2][3] if first >= 2 else 32
    has_skip = stride == 1 and in_filters == filters
    return f"block{first - 1}_add" if has_skip else f"block{first - 1}_project_bn"


@keras.saving.register_keras_serializable(package="cleannet_tf")
class HorizontalFlip(keras.layers.Layer):
    """Mirrors images left-right: (B, H, W, C) -> same."""

    def call(self, images):
        return keras.ops.flip(images, axis=2)


def build_frozen_part(backbone: keras.Model, train_from: str, *, view: str = "original") -> keras.Model:
    """Input "image" (B, H, W, 3) -> output "frozen" (B, h, w, c) (or (B, 1280) for "logits"), inference mode.

    view "flipped" mirrors the image first. Shares the backbone's layers (and weights).
    """
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}. Received: {view!r}")
    frozen = keras.Model(backbone.input, backbone.get_layer(frozen_output_layer(train_from)).output)
    image = keras.Input(backbone.input_shape[1:], name="image")
    inputs = HorizontalFlip(name="flip")(image) if view == "flipped" else image
    output = keras.layers.Identity(name="frozen")(frozen(inputs, training=False))
    return keras.Model(image, {"frozen": output}, name=f"frozen_part_{view}")


def output_shape(frozen_part: keras.Model) -> tuple[int, ...]:
    """The frozen part's output shape without the batch: (h, w, c), or (1280,)."""
    return tuple(int(d) for d in frozen_part.outputs[0].shape[1:])


def build_trained_part(frozen_shape: tuple[int, ...], train_from: str, num_classes: int) -> keras.Model:
    """Input "frozen" (B, *frozen_shape) -> outputs "logits", "probabilities" (B, C): what follows the frozen part.

    Layer names are those of `backbones.build_classifier(efficientnet_lite0 backbone)`.
    """
    frozen = keras.Input(tuple(frozen_shape), name="frozen")
    if train_from == "logits":
        features = frozen
    else:
        features = efficientnet_lite.efficientnet_lite0_top(frozen, first_trained_block(train_from))
    features = keras.layers.Identity(name="features")(features)
    # float32 whatever the global policy (mixed precision keeps the loss in float32).
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(features)
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(logits)
    return keras.Model(frozen, {"logits": logits, "probabilities": probabilities}, name="trained_part")


def _layers_by_name(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """Every layer of `model` and of its nested models, by name (the innermost wins a clash with its container)."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_layers_by_name(layer))
        else:
            found[layer.name] = layer
    return found


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> int:
    """Sets each weighted layer of `target` that `source` also has (by name, nested models searched) to the
    source's weights; returns the number of layers copied. Layers of one name must have the same shapes."""
    sources, copied = _layers_by_name(source), 0
    for name, layer in _layers_by_name(target).items():
        if layer.weights and name in sources:
            layer.set_weights(sources[name].get_weights())
            copied += 1
    return copied


def set_trainable_from(classifier: keras.Model, train_from: str) -> None:
    """Freezes the classifier's backbone layers before the first trained one (trainable=False: inference mode)."""
    classifier.trainable = True
    if train_from == "all":
        return
    backbone = classifier.get_layer("backbone")
    backbone.trainable = train_from != "logits"
    if train_from == "logits":
        return
    last_frozen = frozen_output_layer(train_from)
    for layer in backbone.layers:
        layer.trainable = False
        if layer.name == last_frozen:
            break


class FrozenCache:
    """The frozen part's outputs of every table row: one FeatureStore per view, each (N, prod(shape)), in
    <cache root>/<key>/<view>/ (`key`: the folder's name).

    gather(rows, views) -> (n, *shape) in the stores' dtype. Every shard is memory-mapped once, here: `gather`
    then parses no .npy header (NumPy does that with `ast`, which CPython 3.11 does not allow in two threads at
    once, and `gather` runs in tf.data's threads while the main thread traces functions).
    """

    def __init__(self, stores: dict[str, FeatureStore], shape: tuple[int, ...]):
        self.stores, self.shape = stores, tuple(shape)
        self.views = tuple(stores)
        self.key = os.path.basename(os.path.dirname(os.path.normpath(next(iter(stores.values())).directory)))
        first = next(iter(stores.values()))
        self.num_rows, self.shard_size, self.dtype = first.num_rows, first.shard_size, first.dtype
        self._shards = [[store.shard_features(shard) for shard in range(store.num_shards)]
                        for store in stores.values()]

    def valid(self) -> np.ndarray:
        """(N,) bool: rows every view holds (their image was read)."""
        return np.logical_and.reduce([store.valid() for store in self.stores.values()])

    def gather(self, rows: np.ndarray, views: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), *shape): row i from the view index views[i] (default 0, "original")."""
        rows = np.asarray(rows, np.int64)
        views = np.zeros(len(rows), np.int64) if views is None else np.asarray(views, np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"Rows must be in [0, {self.num_rows}). Received min {rows.min()}, max {rows.max()}")
        out = np.empty((len(rows), int(np.prod(self.shape))), self.dtype)
        shard_of_row = rows // self.shard_size
        for i in range(len(rows)):
            out[i] = self._shards[views[i]][shard_of_row[i]][rows[i] - shard_of_row[i] * self.shard_size]
        return out.reshape((len(rows), *self.shape))


def cache_key(settings: dict) -> str:
    """16 hex digits naming the cache of these frozen-part settings (a folder under the cache root)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fill_frozen_cache(directory: str, *, keys: np.ndarray, paths: np.ndarray, backbone: keras.Model,
                      train_from: str, views: tuple[str, ...], settings: dict, image_size: tuple[int, int],
                      resize: str, batch_size: int, strategy: tf.distribute.Strategy | None = None,
                      dtype: str = "float16", parallel_calls: int = 0, max_pixels: int | None = None,
                      progress: bool = True) -> FrozenCache:
    """The frozen part's outputs of every row into DIRECTORY/<view>/ (resumable: finished shards are kept).

    backbone: the whole backbone (built in `strategy.scope()`); `settings`: what determines the outputs (written
    to each store's manifest; a store of other settings is an error naming it).
    """
    frozen_shape = output_shape(build_frozen_part(backbone, train_from))
    flat_dim = int(np.prod(frozen_shape))
    shard_size = int(max(1, min(8192, CACHE_BYTES_PER_SHARD // (4 * flat_dim))))
    stores = {}
    for view in views:
        store = FeatureStore.create_or_open(
            os.path.join(directory, view), keys=keys, paths=paths, feature_dim=flat_dim, shard_size=shard_size,
            extractor={**settings, "view": view, "shape": list(frozen_shape)}, dtype=dtype)
        if not store.complete:
            part = build_frozen_part(backbone, train_from, view=view)
            flat = keras.Model(part.input, {"features": keras.layers.Flatten()(part.outputs[0])})
            extra = {} if max_pixels is None else {"max_pixels": max_pixels}
            extract_features(paths, store, flat, image_size=image_size, batch_size=batch_size, resize=resize,
                             strategy=strategy, parallel_calls=parallel_calls, progress=progress, **extra)
        if not store.finalized:
            store.finalize()
        stores[view] = store
    return FrozenCache(stores, frozen_shape)


def build_features_part(classifier: keras.Model, frozen_shape: tuple[int, ...], train_from: str) -> keras.Model:
    """Input "frozen" (B, *frozen_shape) -> output "features" (B, 1280): the trained part of `classifier` (a whole
    `backbones.build_classifier` model fine-tuned from `train_from`) up to its backbone's features layer."""
    trained = build_trained_part(frozen_shape, train_from, int(classifier.outputs[0].shape[-1]))
    copy_weights_by_name(classifier, trained)
    return keras.Model(trained.input, {"features": trained.get_layer("features").output}, name="features_part")


def extract_from_cache(cache: FrozenCache, features_part: keras.Model, store: FeatureStore, *, batch_size: int,
                       shards: list[int] | None = None) -> dict:
    """Fills the unfinished shards of `store` (of `shards`, when given) with `features_part` run on the cached
    frozen outputs ("original" view) of their rows; rows the cache holds no image for stay invalid.

    Returns stats as `extract_features`' (images, unreadable_rows, seconds, images_per_second, shards_done_before,
    shards_written) and from_frozen_cache: True.
    """
    mine = range(store.num_shards) if shards is None else sorted(int(s) for s in shards)
    todo = [s for s in mine if not store.is_finished(s)]
    stats = {"images": 0, "unreadable_rows": [], "too_large_rows": [], "seconds": 0.0, "images_per_second": 0.0,
             "from_frozen_cache": True, "shards_done_before": len(mine) - len(todo), "shards_written": []}
    start_time = time.perf_counter()
    valid_rows = cache.valid()
    predict = tf.function(lambda frozen: features_part(frozen, training=False)["features"])
    for shard in todo:
        start, end = store.shard_rows(shard)
        valid = valid_rows[start:end]
        features = np.zeros((end - start, store.feature_dim), np.float32)
        rows = np.arange(start, end)[valid]
        for begin in range(0, len(rows), batch_size):
            chunk = rows[begin:begin + batch_size]
            frozen = tf.constant(cache.gather(chunk), tf.float32)
            features[chunk - start] = predict(frozen).numpy()
        store.write_shard(shard, features, valid)
        stats["images"] += len(rows)
        stats["unreadable_rows"] += np.arange(start, end)[~valid].tolist()
        stats["shards_written"].append(shard)
    stats["seconds"] = time.perf_counter() - start_time
    stats["images_per_second"] = stats["images"] / max(stats["seconds"], 1e-9)
    return stats
