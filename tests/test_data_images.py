"""tf.data image pipeline: decoding, resizing, augmentation, skipped files."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cleannet_tf.data import images


def _decode(path, size, resize="squash"):
    return images.decode_image(tf.io.read_file(str(path)), size, resize).numpy()


def test_png_at_target_size_is_exact(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(_decode(tmp_path / "a.png", (12, 20)), pixels.astype(np.float32))


def test_jpeg_grayscale_and_resize(tmp_path):
    Image.fromarray(np.full((40, 60), 200, np.uint8)).save(tmp_path / "g.jpg")
    image = _decode(tmp_path / "g.jpg", (10, 15))
    assert image.shape == (10, 15, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, 200.0, atol=2.0)


def test_center_crop_keeps_the_middle(tmp_path):
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, 100:200] = 255  # bright centre square, dark sides
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    cropped = _decode(tmp_path / "wide.png", (32, 32), "center_crop")
    squashed = _decode(tmp_path / "wide.png", (32, 32), "squash")
    assert cropped.shape == (32, 32, 3)
    assert cropped.mean() > 250  # only the centre survives the crop
    assert 60 < squashed.mean() < 110  # squashing keeps all three thirds


def test_unreadable_files_are_skipped_and_reported(tmp_path, make_images):
    paths = list(make_images(tmp_path / "imgs", 9))
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(open(paths[0], "rb").read()[:100])
    paths[2], paths[4], paths[6] = str(tmp_path / "bad.jpg"), str(tmp_path / "missing.png"), str(truncated)
    dataset = images.make_image_dataset(paths, image_size=(16, 16), batch_size=4,
                                                labels=np.arange(9) * 10, weights=np.linspace(0, 1, 9))
    batches = list(dataset)
    rows = np.concatenate([b["row"].numpy() for b in batches])
    np.testing.assert_array_equal(rows, [0, 1, 3, 5, 7, 8])
    np.testing.assert_array_equal(np.concatenate([b["label"].numpy() for b in batches]), rows * 10)
    np.testing.assert_allclose(np.concatenate([b["weight"].numpy() for b in batches]), np.linspace(0, 1, 9)[rows])
    np.testing.assert_array_equal(images.missing_rows(np.arange(9), rows), [2, 4, 6])


@pytest.mark.parametrize("augment", ["flip", "flip_crop", "randaugment"])
def test_augmentations(tmp_path, make_images, augment):
    paths = make_images(tmp_path / "imgs", 8, size=(40, 40))
    kwargs = dict(image_size=(24, 24), batch_size=8, augment=augment, seed=3)
    first = next(iter(images.make_image_dataset(paths, **kwargs)))["image"].numpy()
    plain = next(iter(images.make_image_dataset(paths, image_size=(24, 24), batch_size=8)))["image"].numpy()
    assert first.shape == (8, 24, 24, 3)
    assert first.min() >= 0.0 and first.max() <= 255.0
    assert not np.allclose(first, plain)  # augmentation changed something


def test_shuffle_is_a_function_of_seed(tmp_path, make_images):
    paths = make_images(tmp_path / "imgs", 20, size=(8, 8))

    def order(seed):
        dataset = images.make_image_dataset(paths, image_size=(8, 8), batch_size=20, shuffle=True, seed=seed)
        return next(iter(dataset))["row"].numpy()

    np.testing.assert_array_equal(order(1), order(1))
    assert sorted(order(1)) == list(range(20)) and not np.array_equal(order(1), order(2))


# ----------------------------------------------------------------------------- the pixel limit

def test_header_size_of_every_format_without_decoding(tmp_path):
    import io

    from image_bombs import bmp_header, gif_header

    for fmt, extra in (("PNG", {}), ("GIF", {}), ("BMP", {}), ("JPEG", {}), ("WEBP", {}),
                       ("WEBP", {"lossless": True})):
        buffer = io.BytesIO()
        Image.new("RGB", (37, 23)).save(buffer, format=fmt, **extra)
        np.testing.assert_array_equal(images.header_size(tf.constant(buffer.getvalue())), [23, 37], fmt)
    np.testing.assert_array_equal(images.header_size(tf.constant(gif_header(30000, 20000))), [20000, 30000])
    np.testing.assert_array_equal(images.header_size(tf.constant(bmp_header(300, -200))), [200, 300])
    np.testing.assert_array_equal(images.header_size(tf.constant(b"xx")), [0, 0])


def test_images_over_the_pixel_limit_fail_before_decoding(tmp_path):
    from image_bombs import bmp_header, gif_header, write_png_bomb

    write_png_bomb(tmp_path / "bomb.png")
    for data in (open(tmp_path / "bomb.png", "rb").read(), gif_header(9000, 9000), bmp_header(7000, -7000)):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"image is \d+ x \d+ pixels, over the limit of "
                                                                 r"40000000"):
            images.decode_image(tf.constant(data), (8, 8))
    Image.new("RGB", (100, 50)).save(tmp_path / "ok.png")
    data = tf.io.read_file(str(tmp_path / "ok.png"))
    assert images.decode_image(data, (8, 8), max_pixels=5000).shape == (8, 8, 3)  # exactly at the limit
    with pytest.raises(tf.errors.InvalidArgumentError, match="image is 100 x 50 pixels, over the limit of 4999"):
        images.decode_image(data, (8, 8), max_pixels=4999)


def test_a_gif_is_held_to_the_pixels_of_all_its_frames(tmp_path):
    from image_bombs import write_gif_bomb

    assert write_gif_bomb(tmp_path / "bomb.gif", frames=100) < 1_000_000  # 100 frames of 2000 x 2000
    data = tf.constant((tmp_path / "bomb.gif").read_bytes())
    assert int(images.gif_frame_pixels(data)) == 100 * 2000 * 2000
    np.testing.assert_array_equal(images.header_size(data), [2000, 2000])  # the screen alone is within the limit
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="GIF frames are 400000000 pixels in all, over the limit of 40000000"):
        images.decode_image(data, (8, 8))
    frames = [Image.new("RGB", (60, 40), (40 * i, 0, 0)) for i in range(5)]
    frames[0].save(tmp_path / "small.gif", save_all=True, append_images=frames[1:], duration=10)
    small = tf.constant((tmp_path / "small.gif").read_bytes())
    assert int(images.gif_frame_pixels(small)) == 5 * 60 * 40
    assert images.decode_image(small, (8, 8), max_pixels=5 * 60 * 40).shape == (8, 8, 3)  # at the limit
    with pytest.raises(tf.errors.InvalidArgumentError, match="GIF frames are 12000 pixels in all, over the limit "
                                                             "of 11999"):
        images.decode_image(small, (8, 8), max_pixels=5 * 60 * 40 - 1)
    assert int(images.gif_frame_pixels(tf.constant(b""))) == 0 == int(images.gif_frame_pixels(tf.constant(b"GIF89a")))


_EXTRACT_CHILD = r"""
import json, sys
import keras, numpy as np, tensorflow as tf
from cleannet_tf.features import backbones
from cleannet_tf.features import extract as feature_extraction
from cleannet_tf.features.store import FeatureStore

def peak_rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024

paths = np.array(sys.argv[1:])
backbone = backbones.build_backbone("small_cnn", image_size=(32, 32))
store = FeatureStore.create_or_open(sys.argv[1] + ".features", keys=paths, paths=paths, feature_dim=256,
                                    shard_size=4, extractor={"test": 1})
feature_extraction.extract_features(paths[:1], FeatureStore.create_or_open(sys.argv[1] + ".warm", keys=paths[:1],
                             paths=paths[:1], feature_dim=256, shard_size=4, extractor={"test": 1}), backbone,
                             image_size=(32, 32), batch_size=4, progress=False)  # TF and the model warmed up
before = peak_rss()
stats = feature_extraction.extract_features(paths, store, backbone, image_size=(32, 32), batch_size=4, progress=False)
print(json.dumps({"before": before, "after": peak_rss(), "too_large": stats["too_large_rows"],
                  "unreadable": stats["unreadable_rows"], "images": stats["images"], "complete": store.complete}))
"""


def test_extraction_skips_a_png_bomb_as_too_large_with_bounded_memory(tmp_path, make_images):
    import json
    import os
    import subprocess
    import sys

    from image_bombs import write_png_bomb

    paths = list(make_images(tmp_path / "imgs", 6))
    assert write_png_bomb(tmp_path / "bomb.png") < 200_000  # 20000 x 20000 pixels in a small file
    paths[2] = str(tmp_path / "bomb.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    paths[4] = str(tmp_path / "bad.jpg")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", _EXTRACT_CHILD, *paths], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["too_large"] == [2] and got["unreadable"] == [4] and got["images"] == 4 and got["complete"]
    assert got["after"] - got["before"] < 300 << 20, got  # decoding it would take 1.2 GB (uint8), 4.8 GB (float)
    assert "too large image(s) skipped (over 40000000 pixels)" in result.stderr


_THUMBNAIL_CHILD = r"""
import json, sys
from cleannet_tf.pipeline.report import _thumbnail

def peak_rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024

_thumbnail(sys.argv[2])
before = peak_rss()
results = [_thumbnail(path) for path in sys.argv[1:]]
print(json.dumps({"growth": peak_rss() - before, "results": [[uri is not None, why] for uri, why in results]}))
"""


def test_report_thumbnails_refuse_images_over_the_pixel_limit(tmp_path):
    import json
    import subprocess
    import sys

    from image_bombs import write_png_bomb

    write_png_bomb(tmp_path / "bomb.png")  # 400 MP: PIL's own DecompressionBombError
    write_png_bomb(tmp_path / "big.png", 8000, 6000)  # 48 MP: under PIL's limit, over ours
    Image.new("RGB", (64, 48), (10, 200, 30)).save(tmp_path / "ok.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    paths = [str(tmp_path / name) for name in ("bomb.png", "ok.jpg", "big.png", "bad.jpg")]
    result = subprocess.run([sys.executable, "-c", _THUMBNAIL_CHILD, *paths], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["results"] == [[False, "too large"], [True, ""], [False, "too large (8000 x 6000)"],
                              [False, "unreadable"]]
    assert got["growth"] < 100 << 20, got  # decoding the 48 MP one as RGB alone would take 144 MB
