"""tf.data image pipeline: files -> batches of {"image": (B, H, W, 3) float32 in [0, 255], "row": (B,) int64}.

JPEG, PNG, GIF, BMP and WebP are decoded in parallel, resized, optionally augmented
with Keras core layers, batched and prefetched. A file that is missing or does
not decode is skipped (never fatal): every element carries its table row, so
callers find the skipped rows by what did not come out (`missing_rows`).

Pixel limit: before any decoding, the width and height are read from the file's
header (`header_size`) and an image of more than `max_pixels` pixels (default
DEFAULT_MAX_PIXELS, 40 megapixels) fails with InvalidArgumentError "image is W x H
pixels, over the limit of N" instead of being decoded, so a small compressed file
that claims 20000 x 20000 pixels (a decompression bomb) costs no memory. A GIF is
also held to the pixels of all its frames together (`gif_frame_pixels`: the decoder
reads every frame before returning the first; a 470 KB GIF of 100 frames at
2000 x 2000 took 390 MB and 2.8 s to decode). Core ops only, so an exported
SavedModel carries the same checks into tensorflow_model_server.

Imports nothing of the package.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

RESIZE_MODES = ("squash", "center_crop")  # decode_image(resize=)
AUGMENTATIONS = ("none", "flip", "flip_crop", "randaugment")  # make_image_dataset(augment=)

AUTOTUNE = tf.data.AUTOTUNE
_CENTER_CROP_FRACTION = 0.875  # 224 of 256, as in ImageNet evaluation
DEFAULT_MAX_PIXELS = 40_000_000
_HEADER_BYTES = 32  # every size field below lies in the first 32 bytes (JPEG: extract_jpeg_shape)


def _bytes_at(header: tf.Tensor, start: int, count: int) -> tf.Tensor:
    """(count,) int64: bytes start..start+count of a (_HEADER_BYTES,) uint8 header."""
    return tf.cast(header[start:start + count], tf.int64)


def _little_endian(header: tf.Tensor, start: int, count: int) -> tf.Tensor:
    values = _bytes_at(header, start, count)
    return tf.reduce_sum(values * tf.constant([256 ** i for i in range(count)], tf.int64))


def _big_endian(header: tf.Tensor, start: int, count: int) -> tf.Tensor:
    values = _bytes_at(header, start, count)
    return tf.reduce_sum(values * tf.constant([256 ** i for i in reversed(range(count))], tf.int64))


def header_size(image_bytes: tf.Tensor) -> tf.Tensor:
    """(2,) int64 [height, width] from the header of one encoded image, without decoding it.

    JPEG: tf.image.extract_jpeg_shape (reads the markers only). PNG: IHDR (bytes 16-24,
    big-endian). GIF: logical screen size (bytes 6-10). BMP: BITMAPINFOHEADER width and
    height (bytes 18-26, signed; the absolute value, as decode_bmp reads them). WebP:
    VP8X canvas, VP8L or VP8 frame size. [0, 0] for any other format (the decoder then
    rejects it). A header cut short reads as zeros beyond its end.
    """
    start = tf.strings.substr(image_bytes, 0, _HEADER_BYTES)
    padded = tf.strings.join([start, tf.constant(b"\0" * _HEADER_BYTES)])
    header = tf.io.decode_raw(tf.strings.substr(padded, 0, _HEADER_BYTES), tf.uint8)
    prefix = tf.strings.substr(padded, 0, 4)
    fourcc = tf.strings.substr(padded, 12, 4)

    def signed32(value):
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    def png():
        return tf.stack([_big_endian(header, 20, 4), _big_endian(header, 16, 4)])

    def gif():
        return tf.stack([_little_endian(header, 8, 2), _little_endian(header, 6, 2)])

    def bmp():
        return tf.stack([signed32(_little_endian(header, 22, 4)), signed32(_little_endian(header, 18, 4))])

    def webp():
        vp8x = tf.stack([_little_endian(header, 27, 3) + 1, _little_endian(header, 24, 3) + 1])
        bits = _little_endian(header, 21, 4)
        vp8l = tf.stack([(bits // 2 ** 14) % 2 ** 14 + 1, bits % 2 ** 14 + 1])
        vp8 = tf.stack([_little_endian(header, 28, 2) % 2 ** 14, _little_endian(header, 26, 2) % 2 ** 14])
        return tf.where(tf.equal(fourcc, b"VP8X"), vp8x, tf.where(tf.equal(fourcc, b"VP8L"), vp8l, vp8))

    def jpeg():
        return tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)

    def unknown():
        return tf.zeros([2], tf.int64)

    is_png = tf.equal(tf.strings.substr(padded, 0, 8), b"\x89PNG\r\n\x1a\n")
    is_gif = _is_gif(image_bytes)
    is_bmp = tf.equal(tf.strings.substr(padded, 0, 2), b"BM")
    is_webp = tf.logical_and(tf.equal(prefix, b"RIFF"), tf.equal(tf.strings.substr(padded, 8, 4), b"WEBP"))
    index = tf.argmax(tf.stack([False, tf.io.is_jpeg(image_bytes), is_png, is_gif, is_bmp, is_webp]),
                      output_type=tf.int32)  # 0 when none matches
    return tf.switch_case(index, [unknown, jpeg, png, gif, bmp, webp])


def _is_gif(image_bytes: tf.Tensor) -> tf.Tensor:
    """() bool: the bytes start with a GIF signature."""
    return tf.equal(tf.strings.substr(image_bytes, 0, 3), b"GIF")


def gif_frame_pixels(image_bytes: tf.Tensor) -> tf.Tensor:
    """() int64: the pixels of every frame of a GIF together (sum of each image descriptor's width x height).

    The GIF decoder reads every frame's raster before it returns the first one, so an animation of many frames
    costs memory in proportion to this sum, not to the screen size of the header. Walks the file's blocks
    (extensions and image descriptors, skipping their length-prefixed sub-blocks: about one step per 256 bytes)
    without decoding any pixel. 0 for a file too short to hold a GIF header.
    """
    data = tf.io.decode_raw(image_bytes, tf.uint8)
    n = tf.size(data, out_type=tf.int64)
    data = tf.concat([data, tf.zeros([1], tf.uint8)], axis=0)  # data[n] = 0: what every read past the end gets

    def byte(i):  # data[i] as int64 (i >= 0); 0 past the end
        return tf.cast(tf.gather(data, tf.minimum(tf.cast(i, tf.int64), n)), tf.int64)

    def table_bytes(flags):  # a colour table of 2^(k+1) RGB entries when bit 7 is set
        return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), flags % 8), 0)

    def step(position, total, in_sub_blocks):
        def sub_block():  # length byte, then that many bytes; length 0 ends the run
            size = byte(position)
            return position + 1 + size, total, size > 0

        def block():
            introducer = byte(position)
            flags = byte(position + 9)
            frame = (byte(position + 5) + 256 * byte(position + 6)) * (byte(position + 7) + 256 * byte(position + 8))
            return tf.switch_case(
                tf.where(tf.equal(introducer, 0x21), 0, tf.where(tf.equal(introducer, 0x2C), 1, 2)),
                [lambda: (position + 2, total, tf.constant(True)),  # extension: introducer, label, sub-blocks
                 lambda: (position + 11 + table_bytes(flags), total + frame, tf.constant(True)),  # image + LZW size
                 lambda: (n, total, tf.constant(False))])  # trailer (0x3B) or anything else: stop

        return tf.cond(in_sub_blocks, sub_block, block)

    start = tf.constant(13, tf.int64) + table_bytes(byte(10))  # header, logical screen descriptor, global colour table
    _, total, _ = tf.while_loop(lambda position, total, in_sub_blocks: position < n, step,
                                (start, tf.constant(0, tf.int64), tf.constant(False)))  # position only grows
    return tf.where(n >= 13, total, tf.constant(0, tf.int64))


def check_pixels(image_bytes: tf.Tensor, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Operation:
    """An assertion (InvalidArgumentError "image is W x H pixels, over the limit of N") on the header size.

    A GIF is also held to the pixels of all its frames (gif_frame_pixels): "GIF frames are P pixels in all, over
    the limit of N".
    """
    size = header_size(image_bytes)
    frames = tf.cond(_is_gif(image_bytes), lambda: gif_frame_pixels(image_bytes), lambda: tf.constant(0, tf.int64))
    message = tf.where(size[0] * size[1] > max_pixels,
                       tf.strings.join(["image is ", tf.strings.as_string(size[1]), " x ",
                                        tf.strings.as_string(size[0]), f" pixels, over the limit of {max_pixels}"]),
                       tf.strings.join(["GIF frames are ", tf.strings.as_string(frames),
                                        f" pixels in all, over the limit of {max_pixels}"]))
    return tf.debugging.Assert(tf.logical_and(size[0] * size[1] <= max_pixels, frames <= max_pixels), [message])


def _decode_checked(image_bytes: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """(h, w, 3) uint8 at full size, after the pixel limit check."""
    with tf.control_dependencies([check_pixels(image_bytes, max_pixels)]):
        return tf.io.decode_image(tf.identity(image_bytes), channels=3, expand_animations=False)


def _decode_at_least(image_bytes: tf.Tensor, min_height: int, min_width: int,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Decodes to (h, w, 3) uint8, JPEGs at the smallest DCT scale (1, 1/2, 1/4, 1/8) still >= the minimum.

    libjpeg's scaled decoding skips most of the work for images much larger
    than the target (e.g. 320-px photos for a 32-px CNN) and filters as it
    scales; other formats decode at full size. Images over `max_pixels` (by their
    header) fail before decoding.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    with tf.control_dependencies([check_pixels(image_bytes, max_pixels)]):
        image_bytes = tf.identity(image_bytes)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.float32)
        fits = [tf.logical_and(tf.math.ceil(shape[0] / r) >= min_height, tf.math.ceil(shape[1] / r) >= min_width)
                for r in (2.0, 4.0, 8.0)]
        index = tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))  # feasible ratios are a prefix of 2, 4, 8
        return tf.switch_case(index, [lambda r=r: tf.io.decode_jpeg(image_bytes, channels=3, ratio=r)
                                      for r in (1, 2, 4, 8)])

    def other():
        return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def decode_image(image_bytes: tf.Tensor, image_size: tuple[int, int], resize: str = "squash",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Decodes one image and resizes it: bytes -> (H, W, 3) float32 in [0, 255].

    resize: "squash" (resize to H x W) or "center_crop" (resize the short side
    to H/0.875, then take the central H x W). max_pixels: larger images (by their
    header) fail with InvalidArgumentError before decoding.
    """
    height, width = image_size
    if resize == "center_crop":
        minimum = (int(np.ceil(height / _CENTER_CROP_FRACTION)), int(np.ceil(width / _CENTER_CROP_FRACTION)))
    else:
        minimum = (height, width)
    image = tf.cast(_decode_at_least(image_bytes, *minimum, max_pixels), tf.float32)
    if resize == "center_crop":
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.maximum(height / shape[0], width / shape[1]) / _CENTER_CROP_FRACTION
        scaled = tf.cast(tf.math.ceil(shape * scale), tf.int32)
        image = tf.image.resize(image, scaled, antialias=True)
        image = tf.image.resize_with_crop_or_pad(image, height, width)
    elif resize == "squash":
        image = tf.image.resize(image, (height, width), antialias=True)
    else:
        raise ValueError(f"resize must be 'squash' or 'center_crop'. Received: {resize!r}")
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), (height, width, 3))


class ImageTooLargeError(ValueError):
    """An image whose header claims more than the pixel limit: "image is W x H pixels, over the limit of N"."""


def decode_to_fit(image_bytes: bytes, longest_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Eagerly decodes one image to (h, w, 3) uint8 with max(h, w) <= longest_side, keeping its aspect ratio.

    Never enlarges. The header is held to `max_pixels` (GIFs: all frames) before any decoding: ImageTooLargeError.
    JPEGs decode at the smallest DCT scale still >= longest_side on both sides. A file that does not decode
    raises tf.errors.InvalidArgumentError.
    """
    image_bytes = tf.constant(image_bytes, tf.string)
    height, width = (int(v) for v in header_size(image_bytes).numpy())
    if height * width > max_pixels:
        raise ImageTooLargeError(f"image is {width} x {height} pixels, over the limit of {max_pixels}")
    if bool(_is_gif(image_bytes)):
        frames = int(gif_frame_pixels(image_bytes))
        if frames > max_pixels:
            raise ImageTooLargeError(f"GIF frames are {frames} pixels in all, over the limit of {max_pixels}")
    image = _decode_at_least(image_bytes, longest_side, longest_side, max_pixels)
    if max(image.shape[:2]) <= longest_side:
        return image
    resized = tf.image.resize(image, (longest_side, longest_side), preserve_aspect_ratio=True, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def random_resized_crop(image_bytes: tf.Tensor, image_size: tuple[int, int], seed: tf.Tensor,
                        area_range=(0.25, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.Tensor:
    """Inception-style random crop of a decoded image: bytes -> (H, W, 3) float32."""
    image = _decode_checked(image_bytes, max_pixels)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range, area_range=area_range, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.cast(tf.slice(image, begin, size), tf.float32)
    image = tf.image.resize(image, image_size, antialias=True)
    return tf.ensure_shape(tf.clip_by_value(image, 0.0, 255.0), (*image_size, 3))


def build_augmenter(name: str, seed: int = 0) -> keras.layers.Layer | None:
    """Batch augmentation from Keras core layers (None for "none"/"flip_crop" crop part)."""
    if name == "none":
        return None
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    if name in ("flip", "flip_crop"):
        return flip
    if name == "randaugment":
        return keras.layers.Pipeline([flip, keras.layers.RandAugment(value_range=(0, 255), seed=seed)])
    raise ValueError(f"augment must be none, flip, flip_crop or randaugment. Received: {name!r}")


def make_image_dataset(paths, *, image_size: tuple[int, int], batch_size: int, rows=None, labels=None,
                       weights=None, resize: str = "squash", augment: str = "none", shuffle: bool = False,
                       repeat: bool = False, seed: int = 0, parallel_calls: int = 0,
                       drop_remainder: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> tf.data.Dataset:
    """Images from files, batched.

    Args:
        paths: (N,) str. Image files.
        image_size: (H, W).
        batch_size: int. Global batch size.
        rows: (N,) int. Table row of each path (default 0..N-1), carried as "row".
        labels: optional (N,) int, carried as "label".
        weights: optional (N,) float, carried as "weight".
        resize: "squash" or "center_crop" (evaluation); training with augment
            "flip_crop" takes random resized crops instead.
        augment: "none", "flip", "flip_crop" or "randaugment".
        shuffle, repeat, seed: training order; the order is a function of seed.
        parallel_calls: decode parallelism (0 = AUTOTUNE).
        max_pixels: images with more pixels (by their header) are skipped undecoded.

    Returns:
        A dataset of dicts: "image" (B, H, W, 3) float32 in [0, 255], "row" (B,)
        int64, and "label" (B,) int32 / "weight" (B,) float32 when given.
        Unreadable and too large images are skipped (`skipped_reasons` says which).
    """
    paths = np.asarray(paths, dtype=str)
    rows = np.arange(len(paths), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(rows) != len(paths):
        raise ValueError(f"rows and paths must have the same length. Received: {len(rows)} and {len(paths)}")
    columns = {"path": paths, "row": rows}
    if labels is not None:
        columns["label"] = np.asarray(labels, dtype=np.int32)
    if weights is not None:
        columns["weight"] = np.asarray(weights, dtype=np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle:
        dataset = dataset.shuffle(min(len(paths), 100_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    height, width = image_size
    crop = augment == "flip_crop"

    def load(element, element_seed):
        image_bytes = tf.io.read_file(element.pop("path"))
        if crop:
            image = random_resized_crop(image_bytes, (height, width), element_seed, max_pixels=max_pixels)
        else:
            image = decode_image(image_bytes, (height, width), resize, max_pixels)
        return {"image": image, **element}

    if crop:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds)
    else:
        dataset = dataset.map(lambda element: (element, tf.zeros([2], tf.int64)))
    calls = parallel_calls or AUTOTUNE
    dataset = dataset.map(load, num_parallel_calls=calls, deterministic=True).ignore_errors(log_warning=True)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=calls)
    augmenter = build_augmenter(augment, seed)
    if augmenter is not None:
        dataset = dataset.map(lambda batch: {**batch, "image": augmenter(batch["image"], training=True)},
                              num_parallel_calls=calls)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options).prefetch(AUTOTUNE)


def missing_rows(expected_rows: np.ndarray, produced_rows: np.ndarray) -> np.ndarray:
    """Rows that were asked for but not produced (unreadable images), sorted."""
    return np.setdiff1d(np.asarray(expected_rows), np.asarray(produced_rows))


TOO_LARGE, UNREADABLE = "too large", "unreadable"


def skipped_reasons(paths, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[str]:
    """Why each of these (skipped) image files was skipped: TOO_LARGE (header over max_pixels) or UNREADABLE.

    Reads only each file's header; meant for the few rows `missing_rows` found.
    """
    reasons = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)  # JPEG markers before the frame header fit in 64 KB in practice
            if len(head) == 1 << 16 and tf.io.is_jpeg(head):
                with open(path, "rb") as f:
                    head = f.read()
            height, width = header_size(tf.constant(head)).numpy()
            reasons.append(TOO_LARGE if int(height) * int(width) > max_pixels else UNREADABLE)
        except (OSError, tf.errors.OpError):
            reasons.append(UNREADABLE)
    return reasons
