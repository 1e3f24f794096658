"""review.session thumbnails: decoded by the pipeline's pixel-limited decoder, never PIL at full size."""

from __future__ import annotations

import io
import resource

import numpy as np
import pytest
from image_bombs import write_gif_bomb, write_png_bomb
from PIL import Image
from review_helpers import make_workdir

from cleannet_tf.review.session import ReviewError, ReviewSession


@pytest.fixture
def session(tmp_path):
    _, work, config = make_workdir(tmp_path)
    return ReviewSession(config, work, user="ana")


def test_thumbnails_keep_the_aspect_ratio_and_never_enlarge(session):
    key = str(session.snapshot.table.keys[0])  # 32 x 24 pixels
    small = Image.open(io.BytesIO(session.thumbnail(key, 96)))
    assert small.format == "JPEG" and small.size == (32, 24)
    path = session.snapshot.table.paths[1]
    pixels = np.random.default_rng(0).integers(0, 256, (300, 600, 3), np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")
    thumbnail = Image.open(io.BytesIO(session.thumbnail(str(session.snapshot.table.keys[1]), 160)))
    assert thumbnail.size == (160, 80)
    expected = np.asarray(Image.fromarray(pixels).resize((160, 80), Image.BILINEAR), np.float32)
    assert np.abs(np.asarray(thumbnail, np.float32).mean((0, 1)) - expected.mean((0, 1))).max() < 8


def test_a_decompression_bomb_is_refused_by_its_header_without_decoding(session):
    """A 12000 x 12000 PNG (~100 KB) once cost ~690 MB a request through PIL; now the header check refuses it."""
    table = session.snapshot.table
    size = write_png_bomb(table.paths[0], width=12000, height=12000)
    assert size < 200_000
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(ReviewError, match=r"image is 12000 x 12000 pixels, over the limit of 40000000") as caught:
        session.thumbnail(str(table.keys[0]), 160)
    assert caught.value.status == 422 and str(table.paths[0]) in str(caught.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100_000  # < 100 MB more at peak

    session.config.input.max_pixels = 1_000_000  # the configured limit is the one applied
    write_png_bomb(table.paths[1], width=1001, height=1000)
    with pytest.raises(ReviewError, match="image is 1001 x 1000 pixels, over the limit of 1000000"):
        session.thumbnail(str(table.keys[1]), 160)
    write_gif_bomb(table.paths[2], frames=30, width=200, height=200)  # 1.2 MP in all, 40 kP on screen
    with pytest.raises(ReviewError, match="GIF frames are 1200000 pixels in all, over the limit of 1000000"):
        session.thumbnail(str(table.keys[2]), 160)


def test_a_file_that_does_not_decode_is_a_404_naming_it(session):
    table = session.snapshot.table
    with open(table.paths[3], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ReviewError, match="cannot read the image") as caught:
        session.thumbnail(str(table.keys[3]), 96)
    assert caught.value.status == 404 and str(table.paths[3]) in str(caught.value)
