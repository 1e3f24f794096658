"""The embedded demo dataset's content (cleannet_tf/data/demo_render.py): known noise and look-alike flips, source
digits split between train and test, decodable unique images, held-out choice and determinism for a seed."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from demo_data_helpers import SMALL, _generate, _lines, _pool_rows, _tree_digest, _truth_rows, _verified
from PIL import Image

from cleannet_tf.data.demo_render import LOOKALIKE, _load_digits, heldout_classes, split_source_digits


def _digits(class_name):
    return [int(d) for d in class_name.split("_")[1]]


@pytest.mark.parametrize("kind, noise_rate, share", [("digits", 0.3, 0.5), ("two_digits", 0.3, 0.5),
                                                     ("digits", 0.17, 0.8), ("two_digits", 0.45, 0.25)])
def test_noise_rate_types_and_lookalike_map(tmp_path, kind, noise_rate, share):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], noise_rate=noise_rate,
                     lookalike_share=share, test_images_per_class=1)
    rows = _pool_rows(info.root)
    n = len(info.class_names) * SMALL[kind]
    assert len(rows) == info.num_images == n
    assert [r["key"] for r in rows] == _lines(info.root, "imagelist.tsv")[1:]
    noisy = [r for r in rows if r["true_class"] != r["noisy_class"]]
    assert len(noisy) == info.num_noisy == round(noise_rate * n)
    assert info.realised_noise_rate == pytest.approx(round(noise_rate * n) / n)
    assert abs(info.realised_noise_rate - noise_rate) <= 0.5 / n
    assert all(r["noise_type"] == "clean" for r in rows if r["true_class"] == r["noisy_class"])
    types = [r["noise_type"] for r in noisy]
    assert types.count("lookalike") == info.num_lookalike == round(share * len(noisy))
    assert types.count("uniform") == info.num_uniform == len(noisy) - info.num_lookalike
    for r in noisy:
        true_digits, noisy_digits = _digits(r["true_class"]), _digits(r["noisy_class"])
        if r["noise_type"] == "lookalike":  # exactly one digit changed, to its look-alike
            changed = [(t, d) for t, d in zip(true_digits, noisy_digits, strict=True) if t != d]
            assert len(changed) == 1 and LOOKALIKE[changed[0][0]] == changed[0][1]
    # Each image sits in the folder of its noisy class; every true class has images_per_class images.
    assert all(r["key"].split("/")[0] == r["noisy_class"] for r in rows)
    true_counts = {name: 0 for name in info.class_names}
    for r in rows:
        true_counts[r["true_class"]] += 1
    assert set(true_counts.values()) == {SMALL[kind]}
    with open(os.path.join(info.root, "meta", "demo_info.json")) as f:
        recorded = json.load(f)
    assert recorded["num_noisy"] == info.num_noisy and recorded["parameters"]["noise_rate"] == noise_rate
    assert recorded["parameters"]["seed"] == 0 and recorded["kind"] == kind
    assert {int(k): v for k, v in recorded["lookalike"].items()} == LOOKALIKE


def test_lookalike_map_is_a_proper_confusion_map():
    assert sorted(LOOKALIKE) == list(range(10))
    assert all(a != b for a, b in LOOKALIKE.items())
    for a, b in ((1, 7), (3, 8), (4, 9), (5, 6)):  # the classic pairs go both ways
        assert LOOKALIKE[a] == b and LOOKALIKE[b] == a


def test_two_digit_lookalike_flips_hit_both_positions(tmp_path):
    info = _generate(tmp_path / "d", kind="two_digits", images_per_class=3, test_images_per_class=1)
    positions = set()
    for r in _pool_rows(info.root):
        if r["noise_type"] == "lookalike":
            t, d = r["true_class"][-2:], r["noisy_class"][-2:]
            positions |= {i for i in range(2) if t[i] != d[i]}
    assert positions == {0, 1}


def test_zero_noise_and_full_lookalike(tmp_path):
    clean = _generate(tmp_path / "clean", noise_rate=0.0, images_per_class=10)
    assert clean.num_noisy == 0 and all(r["noise_type"] == "clean" for r in _pool_rows(clean.root))
    assert set(_verified(clean.root, "verified_train.tsv").values()) == {"1"}
    allflip = _generate(tmp_path / "look", noise_rate=1.0, lookalike_share=1.0, images_per_class=10)
    assert allflip.num_noisy == allflip.num_lookalike == 100
    assert all(LOOKALIKE[_digits(r["true_class"])[0]] == _digits(r["noisy_class"])[0]
               for r in _pool_rows(allflip.root))


@pytest.mark.parametrize("kind", ["digits", "two_digits"])
def test_test_images_use_other_source_digits(tmp_path, kind):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], test_images_per_class=3, seed=3)
    pool_sources, test_sources = split_source_digits(3)
    pool_ids = set(np.concatenate(list(pool_sources.values())).tolist())
    test_ids = set(np.concatenate(list(test_sources.values())).tolist())
    assert not pool_ids & test_ids and len(pool_ids | test_ids) == 1797
    assert len(test_ids) == pytest.approx(0.2 * 1797, abs=10)
    _, targets = _load_digits()
    used_pool, used_test = set(), set()
    for r in _truth_rows(info.root):
        sources = [int(s) for s in r["source_digits"].split(",")]
        # The drawn digits are those of the TRUE class, left digit = tens.
        assert [int(targets[s]) for s in sources] == _digits(r["true_class"])
        (used_test if r["key"].startswith("test/") else used_pool).update(sources)
    assert used_pool <= pool_ids and used_test <= test_ids and used_pool and used_test
    assert not used_pool & used_test


def test_sources_are_dealt_evenly(tmp_path):
    info = _generate(tmp_path / "d", images_per_class=160, test_images_per_class=0, noise_rate=0.0)
    counts = np.bincount([int(r["source_digits"]) for r in _pool_rows(info.root)], minlength=1797)
    pool_sources, _ = split_source_digits(0)
    for digit, ids in pool_sources.items():  # 160 images from ~144 sources: each used once or twice
        assert counts[ids].min() >= 160 // len(ids) and counts[ids].max() <= -(-160 // len(ids)), digit
    # Sources are reused, the images are not: shift and intensity jitter make every file different.
    digests = _tree_digest(os.path.join(info.root, "images"))
    assert len(digests) == 1600 and len(set(digests.values())) == 1600


@pytest.mark.parametrize("kind, size", [("digits", (32, 32)), ("two_digits", (32, 64))])
def test_every_listed_image_exists_decodes_and_is_unique(tmp_path, kind, size):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], test_images_per_class=2)
    assert info.image_size == size
    paths = [os.path.join(info.root, "images", key) for key in _lines(info.root, "imagelist.tsv")[1:]]
    paths += [os.path.join(info.root, "test", f"{key}.jpg") for key in _lines(info.root, "test.txt")]
    assert len(paths) == info.num_images + info.num_test_images
    digests = set()
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        digests.add(hashlib.sha256(data).hexdigest())
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == size[::-1]
            pixels = np.asarray(image)
        assert pixels.max() > 100  # a digit, not a blank
    assert len(digests) == len(paths)  # no two images byte-identical
    # Nothing else on disk: exactly the listed images.
    on_disk = sum(len(files) for folder in ("images", "test") for _, _, files in os.walk(os.path.join(info.root,
                                                                                                      folder)))
    assert on_disk == len(paths)
    # Keys: 32 hex digits, unique.
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    assert len(set(names)) == len(names) and all(len(x) == 32 and int(x, 16) >= 0 for x in names)


def test_heldout_choice_depends_on_the_seed():
    a, b = (heldout_classes(100, 50, seed) for seed in (0, 1))
    assert a.sum() == b.sum() == 50 and (a != b).any()


@pytest.mark.parametrize("kind", ["digits", "two_digits"])
def test_deterministic_for_a_seed(tmp_path, kind):
    settings = {"kind": kind, "images_per_class": {"digits": 20, "two_digits": 2}[kind], "test_images_per_class": 1}
    a, b, c = (_generate(tmp_path / name, seed=seed, **settings) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    digest_a, digest_b, digest_c = (_tree_digest(x.root) for x in (a, b, c))
    assert digest_a == digest_b  # every list and every JPEG byte-identical
    assert len(digest_a) == a.num_images + a.num_test_images + 7 + len(a.heldout_lists)  # 7 meta files
    for name in ("imagelist.tsv", "verified_train.tsv", "verified_val.tsv", "truth.tsv", "test.txt"):
        assert digest_a[os.path.join("meta", name)] != digest_c[os.path.join("meta", name)], name
    assert a == dataclasses.replace(b, root=a.root) and a != dataclasses.replace(c, root=a.root)
