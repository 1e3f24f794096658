"""The embedded demo dataset: known noise, verification, held-out lists, determinism, atomic writes."""

import os

import numpy as np
import pytest
from PIL import Image

from cleannet_tf import datasets, demo_data


def _generate(root, **kwargs):
    settings = {"kind": "digits", "images_per_class": 40, "test_images_per_class": 5, **kwargs}
    return demo_data.generate_demo_dataset(str(root), **settings)


def _truth_rows(root):
    with open(os.path.join(root, "meta", "truth.tsv")) as f:
        header = next(f).rstrip("\n").split("\t")
        return [dict(zip(header, line.rstrip("\n").split("\t"), strict=True)) for line in f]


@pytest.mark.parametrize("kind, per_class", [("digits", 40), ("two_digits", 6)])
def test_noise_rate_types_and_lookalike_map(tmp_path, kind, per_class):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=per_class, noise_rate=0.3, test_images_per_class=1)
    rows = [r for r in _truth_rows(info.root) if not r["key"].startswith("test/")]
    assert len(rows) == info.num_images == len(info.class_names) * per_class
    noisy = [r for r in rows if r["true_class"] != r["noisy_class"]]
    assert len(noisy) == info.num_noisy == round(0.3 * info.num_images)
    types = [r["noise_type"] for r in noisy]
    assert types.count("lookalike") == round(0.5 * len(noisy)) and types.count("uniform") == len(noisy) - types.count(
        "lookalike")
    for r in noisy:
        if r["noise_type"] != "lookalike":
            continue
        true_digits, noisy_digits = r["true_class"].split("_")[1], r["noisy_class"].split("_")[1]
        changed = [(t, n) for t, n in zip(true_digits, noisy_digits, strict=True) if t != n]
        assert len(changed) == 1 and demo_data.LOOKALIKE[int(changed[0][0])] == int(changed[0][1])
    # Images sit in the folder of their noisy class.
    assert all(r["key"].split("/")[0] == r["noisy_class"] for r in rows)


def test_verification_labels_match_truth_and_reader(tmp_path):
    info = _generate(tmp_path / "d", verified_fraction_train=0.2, verified_fraction_val=0.1)
    truth = demo_data.read_demo_truth(info.root)
    table = datasets.read_food101n(info.root)
    assert len(table) == info.num_images + info.num_test_images
    verified = table.verification >= 0
    class_sizes = np.bincount(table.labels[table.split != datasets.SPLIT_TEST], minlength=10)
    expected_train = np.round(0.2 * class_sizes).astype(int)  # 20% of each (noisy) class folder
    assert int((verified & (table.split == datasets.SPLIT_TRAIN)).sum()) == info.verified_train == expected_train.sum()
    assert int((verified & (table.split == datasets.SPLIT_VAL)).sum()) == info.verified_val == np.round(
        0.1 * class_sizes).sum()
    for row in np.nonzero(verified)[0]:
        assert table.verification[row] == int(truth[table.keys[row]] == table.labels[row])
    per_class = np.bincount(table.labels[verified & (table.split == datasets.SPLIT_TRAIN)], minlength=10)
    np.testing.assert_array_equal(per_class, expected_train)
    test = table.split == datasets.SPLIT_TEST
    assert all(truth[key] == label for key, label in zip(table.keys[test], table.labels[test], strict=True))


def test_test_images_use_other_source_digits(tmp_path):
    info = _generate(tmp_path / "d")
    rows = _truth_rows(info.root)
    pool = set().union(*[set(r["source_digits"].split(",")) for r in rows if not r["key"].startswith("test/")])
    test = set().union(*[set(r["source_digits"].split(",")) for r in rows if r["key"].startswith("test/")])
    assert pool and test and not pool & test


def test_heldout_lists(tmp_path):
    info = _generate(tmp_path / "d", heldout=3)
    assert info.heldout_lists == ("classes_heldout_3.txt", "classes_heldout_5.txt")
    for name, count in (("classes_heldout_3.txt", 3), ("classes_heldout_5.txt", 5)):
        mask = datasets.read_heldout_list(os.path.join(info.root, "meta", name), info.class_names)
        assert mask.shape == (10,) and int(mask.sum()) == count


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (_generate(tmp_path / name, seed=seed) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    for name in ("imagelist.tsv", "verified_train.tsv", "truth.tsv"):
        assert open(os.path.join(a.root, "meta", name)).read() == open(os.path.join(b.root, "meta", name)).read()
    key = open(os.path.join(a.root, "meta", "imagelist.tsv")).read().splitlines()[5]
    assert open(os.path.join(a.root, "images", key), "rb").read() == open(os.path.join(b.root, "images", key),
                                                                           "rb").read()
    assert open(os.path.join(a.root, "meta", "truth.tsv")).read() != open(os.path.join(c.root, "meta",
                                                                                       "truth.tsv")).read()


@pytest.mark.parametrize("kind, size", [("digits", (32, 32)), ("two_digits", (32, 64))])
def test_images_decode_at_the_documented_size(tmp_path, kind, size):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=2, test_images_per_class=1, noise_rate=0.0)
    table = datasets.read_food101n(info.root)
    for path in table.paths[:: max(1, len(table) // 20)]:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.size[::-1] == size


def test_reuse_refusal_and_atomic_write(tmp_path):
    root = tmp_path / "demo"
    info = _generate(root)
    stamp = os.stat(os.path.join(info.root, "meta", "imagelist.tsv")).st_mtime_ns
    assert _generate(root) == info  # same parameters: reused, not regenerated
    assert os.stat(os.path.join(info.root, "meta", "imagelist.tsv")).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters"):
        _generate(root, noise_rate=0.1)
    # A half-written dataset from a killed run is left under a temporary name, never at the root.
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="not a demo dataset"):
        _generate(tmp_path / "busy")
