"""tf.data image pipeline: decoding, resizing, augmentation, skipped files."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cleannet_tf import input_pipeline


def _decode(path, size, resize="squash"):
    return input_pipeline.decode_image(tf.io.read_file(str(path)), size, resize).numpy()


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
    dataset = input_pipeline.make_image_dataset(paths, image_size=(16, 16), batch_size=4,
                                                labels=np.arange(9) * 10, weights=np.linspace(0, 1, 9))
    batches = list(dataset)
    rows = np.concatenate([b["row"].numpy() for b in batches])
    np.testing.assert_array_equal(rows, [0, 1, 3, 5, 7, 8])
    np.testing.assert_array_equal(np.concatenate([b["label"].numpy() for b in batches]), rows * 10)
    np.testing.assert_allclose(np.concatenate([b["weight"].numpy() for b in batches]), np.linspace(0, 1, 9)[rows])
    np.testing.assert_array_equal(input_pipeline.missing_rows(np.arange(9), rows), [2, 4, 6])


@pytest.mark.parametrize("augment", ["flip", "flip_crop", "randaugment"])
def test_augmentations(tmp_path, make_images, augment):
    paths = make_images(tmp_path / "imgs", 8, size=(40, 40))
    kwargs = dict(image_size=(24, 24), batch_size=8, augment=augment, seed=3)
    first = next(iter(input_pipeline.make_image_dataset(paths, **kwargs)))["image"].numpy()
    plain = next(iter(input_pipeline.make_image_dataset(paths, image_size=(24, 24), batch_size=8)))["image"].numpy()
    assert first.shape == (8, 24, 24, 3)
    assert first.min() >= 0.0 and first.max() <= 255.0
    assert not np.allclose(first, plain)  # augmentation changed something


def test_shuffle_is_a_function_of_seed(tmp_path, make_images):
    paths = make_images(tmp_path / "imgs", 20, size=(8, 8))

    def order(seed):
        dataset = input_pipeline.make_image_dataset(paths, image_size=(8, 8), batch_size=20, shuffle=True, seed=seed)
        return next(iter(dataset))["row"].numpy()

    np.testing.assert_array_equal(order(1), order(1))
    assert sorted(order(1)) == list(range(20)) and not np.array_equal(order(1), order(2))
