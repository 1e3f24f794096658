"""cleannet-export: SavedModels in TF Serving's layout, with warmup requests and a models.config.

    EXPORT_DIR/cleannet_verifier/<version>/     signatures (every input named, batch dimension dynamic):
        serving_default    image_bytes (B,) string, label (B,) int64   -> score, is_noisy, weight_soft,
                                                                          suggested_label, suggested_label_name,
                                                                          suggested_score
        verify_label_name  image_bytes (B,) string, label_name (B,) string -> the same
        verify_features    features (B, D) float32, label (B,) int64   -> the same
        embed              image_bytes (B,) string                     -> query_embedding (B, E)
    EXPORT_DIR/cleannet_classifier/<version>/
        serving_default    image_bytes (B,) string -> probabilities (B, C), top_k (B, k) int64,
                           top_k_names (B, k) string, top_k_scores (B, k)
        classify           inputs (B,) serialized tf.Example with "image/encoded" -> classes (B, C) string,
                           scores (B, C) float32  (TF Serving's Classify API)
    EXPORT_DIR/models.config                    ModelServerConfig text proto listing both models

Images (JPEG, PNG, GIF, BMP, WebP) are decoded and resized in the graph exactly as `cleannet-extract` does
(data/images.py decode_image); bad bytes, images over `max_pixels` by their header ("image is W x H pixels, over
the limit of N"), an unknown label_name ("unknown class 'x'; known: ...") and NaN/Inf features fail the request
with INVALID_ARGUMENT, in the graph, so tensorflow_model_server enforces them too. Core TF ops only, no XLA.
Each version is written to a temporary folder whose name is not a number (servers ignore it) and renamed, so a
polling server never sees half a model; temporary folders of killed exports (`.tmp-VERSION-PID` of a dead PID)
are removed by the next export. Both models of one export get the same version number (one above the larger of
the two current ones). VERSION/assets.extra/ holds tf_serving_warmup_requests (real requests for every
signature) and labels.txt (class names in id order).

Imports `data`, `export.names`, `model`.
"""

from __future__ import annotations

import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from cleannet_tf import atomic_io
from cleannet_tf.data import images as data_images
from cleannet_tf.export.names import CLASSIFIER, IMAGE_FEATURE, LABELS_FILE, VERIFIER, WARMUP_FILE
from cleannet_tf.model.cleannet import query_encoder_of


def _decode_batch(image_bytes: tf.Tensor, image_size: tuple[int, int], resize: str, max_pixels: int) -> tf.Tensor:
    """(B,) encoded images -> (B, H, W, 3) float32 in [0, 255]."""
    return tf.map_fn(lambda b: data_images.decode_image(b, image_size, resize, max_pixels), image_bytes,
                     fn_output_signature=tf.TensorSpec((*image_size, 3), tf.float32))


def _known_classes(class_names, shown: int = 20) -> str:
    names = list(class_names)
    return ", ".join(names[:shown]) + (f", ... ({len(names)} classes)" if len(names) > shown else "")


def build_verifier_archive(verifier: keras.Model, backbone: keras.Model, class_names, *, image_size, resize: str,
                           max_pixels: int = data_images.DEFAULT_MAX_PIXELS) -> keras.export.ExportArchive:
    """The cleannet_verifier signatures around a verifier model and the backbone that made its features.

    Every verify signature also returns suggested_label_name (B,) string, the class name of suggested_label.
    """
    feature_dim = int(verifier.inputs[0].shape[-1]) if not isinstance(verifier.input, dict) else int(
        verifier.input["features"].shape[-1])
    encoder = query_encoder_of(verifier)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(class_names)), tf.range(len(class_names), dtype=tf.int64)), default_value=-1)
    archive = keras.export.ExportArchive()
    archive.track(verifier)
    archive.track(backbone)
    archive.track(table)
    names = tf.constant(list(class_names))

    def verify(features, label):
        outputs = verifier({"features": features, "label": label}, training=False)
        outputs = {name: tf.cast(value, tf.float32) if value.dtype.is_floating else value
                   for name, value in outputs.items()}
        outputs["suggested_label_name"] = tf.gather(names, outputs["suggested_label"])
        return outputs

    def verify_finite_features(features, label):
        features = tf.debugging.check_numerics(features, "features must be finite (NaN or Inf found)")
        return verify(features, label)

    def image_features(image_bytes):
        return backbone(_decode_batch(image_bytes, image_size, resize, max_pixels), training=False)["features"]

    image_spec = tf.TensorSpec([None], tf.string, name="image_bytes")
    label_spec = tf.TensorSpec([None], tf.int64, name="label")
    archive.add_endpoint("serving_default", lambda image_bytes, label: verify(image_features(image_bytes), label),
                         input_signature=[image_spec, label_spec])

    known = _known_classes(class_names)

    def verify_label_name(image_bytes, label_name):
        label = table.lookup(label_name)
        first_unknown = tf.gather(tf.concat([label_name, [""]], 0), tf.argmin(tf.concat([label, [0]], 0)))
        message = tf.strings.join(["unknown class '", first_unknown, f"'; known: {known}"])
        with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(label >= 0), [message])]):
            label = tf.identity(label)
        return verify(image_features(image_bytes), label)

    archive.add_endpoint("verify_label_name", verify_label_name,
                         input_signature=[image_spec, tf.TensorSpec([None], tf.string, name="label_name")])
    archive.add_endpoint("verify_features", verify_finite_features,
                         input_signature=[tf.TensorSpec([None, feature_dim], tf.float32, name="features"), label_spec])
    archive.add_endpoint("embed", lambda image_bytes: {"query_embedding": tf.cast(
        encoder(image_features(image_bytes), training=False)["query_embedding"], tf.float32)},
        input_signature=[image_spec])
    return archive


def build_classifier_archive(classifier: keras.Model, class_names, *, image_size, resize: str, top_k: int = 5,
                             max_pixels: int = data_images.DEFAULT_MAX_PIXELS) -> keras.export.ExportArchive:
    """The cleannet_classifier signatures: serving_default (Predict) and classify (Classify)."""
    names = tf.constant(list(class_names))
    top_k = min(top_k, len(class_names))
    archive = keras.export.ExportArchive()
    archive.track(classifier)

    def probabilities_of(image_bytes):
        images = _decode_batch(image_bytes, image_size, resize, max_pixels)
        return tf.cast(classifier(images, training=False)["probabilities"], tf.float32)

    def predict(image_bytes):
        probabilities = probabilities_of(image_bytes)
        best = tf.math.top_k(probabilities, k=top_k)
        ids = tf.cast(best.indices, tf.int64)
        return {"probabilities": probabilities, "top_k": ids, "top_k_names": tf.gather(names, ids),
                "top_k_scores": best.values}

    def classify(inputs):
        parsed = tf.io.parse_example(inputs, {IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)})
        probabilities = probabilities_of(parsed[IMAGE_FEATURE])
        return {"classes": tf.broadcast_to(names, tf.shape(probabilities)), "scores": probabilities}

    archive.add_endpoint("serving_default", predict,
                         input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    archive.add_endpoint("classify", classify, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    return archive


def next_version(*model_bases: str) -> int:
    """1 + the largest integer-named version folder under any of model_bases (1 when there is none)."""
    versions = [int(name) for base in model_bases if os.path.isdir(base) for name in os.listdir(base)
                if name.isdigit()]
    return max(versions, default=0) + 1


def example_of(image_bytes: bytes) -> bytes:
    """A serialized tf.Example carrying one encoded image under "image/encoded" (the classify input)."""
    feature = {IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def warmup_records(model_name: str, signatures: dict[str, dict[str, np.ndarray]]) -> list[bytes]:
    """Serialized PredictionLogs: one request per signature (Classify for "classify", Predict otherwise)."""
    from tensorflow_serving.apis import (
        classification_pb2,
        input_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    records = []
    for signature, inputs in signatures.items():
        spec = model_pb2.ModelSpec(name=model_name, signature_name=signature)
        if signature == "classify":
            examples = [tf.train.Example.FromString(serialized) for serialized in inputs["inputs"]]
            request = classification_pb2.ClassificationRequest(
                model_spec=spec, input=input_pb2.Input(example_list=input_pb2.ExampleList(examples=examples)))
            log = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
        else:
            request = predict_pb2.PredictRequest(
                model_spec=spec, inputs={name: tf.make_tensor_proto(value) for name, value in inputs.items()})
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def publish(archive: keras.export.ExportArchive, model_base: str, *, class_names, warmup: list[bytes],
            version: int | None = None) -> str:
    """Writes `archive` as model_base/<version>/ (temporary folder, then rename); returns that path."""
    os.makedirs(model_base, exist_ok=True)
    atomic_io.clean_litter(model_base)  # temporary folders of killed exports (their process is gone)
    version = version or next_version(model_base)
    final = os.path.join(model_base, str(version))
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists: versions are never overwritten.")
    tmp = os.path.join(model_base, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with atomic_io.naming_path(final):  # a full disk: DiskFullError naming the version folder
            archive.write_out(tmp, verbose=False)
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            with tf.io.TFRecordWriter(os.path.join(tmp, WARMUP_FILE)) as writer:
                for record in warmup:
                    writer.write(record)
            with open(os.path.join(tmp, LABELS_FILE), "w", encoding="utf-8") as f:
                f.write("".join(f"{name}\n" for name in class_names))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def publish_models(export_dir: str, models: dict[str, tuple[keras.export.ExportArchive, list[bytes]]], *,
                   class_names) -> dict[str, str]:
    """Publishes several models (name -> (archive, warmup records)) under ONE version number, the next above
    every one of them, and writes models.config; returns name -> version folder."""
    bases = {name: os.path.join(export_dir, name) for name in models}
    for base in bases.values():
        os.makedirs(base, exist_ok=True)
        atomic_io.clean_litter(base)
    version = next_version(*bases.values())
    paths = {name: publish(archive, bases[name], class_names=class_names, warmup=warmup, version=version)
             for name, (archive, warmup) in models.items()}
    write_models_config(export_dir)
    return paths


def write_models_config(export_dir: str, model_names=(VERIFIER, CLASSIFIER)) -> str:
    """EXPORT_DIR/models.config (ModelServerConfig text proto, latest version of each model), atomically."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    for name in model_names:
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = os.path.abspath(os.path.join(export_dir, name))
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = 1
    path = os.path.join(export_dir, "models.config")
    atomic_io.write_text(path, text_format.MessageToString(config))
    return path


