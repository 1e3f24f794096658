"""The Clothing1M reader (cleannet_tf/data/clothing1m.py) on tiny release trees under tmp_path (8x8 JPEGs)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import (
    CLOTHING_CLASSES,
    CLOTHING_EXPECTED,
    CLOTHING_LISTS,
    CLOTHING_NOISY,
    clothing_key,
    make_clothing1m,
    write_lines,
)
from error_helpers import _write

from cleannet_tf.data.clothing1m import read_clothing1m
from cleannet_tf.data.table import DatasetError


@pytest.mark.parametrize("subdir", ["", "annotations"])
def test_clothing1m_happy_path(tmp_path, subdir):
    root = make_clothing1m(tmp_path / "clothing", subdir=subdir)
    table = read_clothing1m(root)
    names, labels, verification, split = zip(*CLOTHING_EXPECTED, strict=True)
    assert table.class_names == tuple(CLOTHING_CLASSES)
    assert table.keys.tolist() == [clothing_key(n) for n in names]
    assert table.paths.tolist() == [os.path.join(root, clothing_key(n)) for n in names]
    np.testing.assert_array_equal(table.labels, labels)
    np.testing.assert_array_equal(table.verification, verification)
    np.testing.assert_array_equal(table.split, split)
    assert table.skipped == {
        "noisy_train_key_list.txt keys also in clean_test_key_list.txt (kept as test rows only)": 1,
        "clean_train_key_list.txt keys without a noisy label in noisy_label_kv.txt": 1,
        "clean_val_key_list.txt keys without a noisy label in noisy_label_kv.txt": 1,
    }


def test_clothing1m_missing_file_names_both_places(tmp_path):
    root = make_clothing1m(tmp_path / "clothing")
    os.remove(os.path.join(root, "clean_val_key_list.txt"))
    expected = os.path.join(root, "annotations", "clean_val_key_list.txt")
    with pytest.raises(DatasetError, match=f"clean_val_key_list.txt not found: expected .* or {expected}"):
        read_clothing1m(root)


def test_clothing1m_key_without_label(tmp_path):
    root = make_clothing1m(tmp_path / "clothing", lists={"clean_test_key_list.txt": ["t0", "zz"]})
    with pytest.raises(DatasetError, match=r"clean_test_key_list\.txt, line 2: key 'images/2/z0/zz\.jpg' has no "
                                           r"label in .*clean_label_kv\.txt"):
        read_clothing1m(root)


@pytest.mark.parametrize("value, pattern", [
    ("3", r"noisy_label_kv\.txt, line 8: label 3 out of range \[0, 3\)"),
    ("-1", r"noisy_label_kv\.txt, line 8: label -1 out of range"),
    ("x", r"noisy_label_kv\.txt, line 8: label must be an integer"),
    ("1 2", r"noisy_label_kv\.txt, line 8: expected 'key label'"),
])
def test_clothing1m_bad_label(tmp_path, value, pattern):
    root = make_clothing1m(tmp_path / "clothing")
    with open(os.path.join(root, "noisy_label_kv.txt"), "a") as f:
        f.write(f"images/9/99/bad.jpg {value}\n")
    with pytest.raises(DatasetError, match=pattern):
        read_clothing1m(root)


def test_clothing1m_duplicate_key_in_kv(tmp_path):
    root = make_clothing1m(tmp_path / "clothing")
    with open(os.path.join(root, "clean_label_kv.txt"), "a") as f:
        f.write(f"{clothing_key('c1')} 1\n")
    with pytest.raises(DatasetError, match=r"clean_label_kv\.txt, line 9: duplicate key .*c1\.jpg' \(also on line 5\)"):
        read_clothing1m(root)


def test_clothing1m_duplicate_key_in_list(tmp_path):
    root = make_clothing1m(tmp_path / "clothing", lists={"noisy_train_key_list.txt": ["n0", "n1", "n2", "n1"]})
    with pytest.raises(DatasetError, match=r"noisy_train_key_list\.txt, line 4: duplicate key .*\(also on line 2\)"):
        read_clothing1m(root)


def test_clothing1m_overlapping_clean_lists(tmp_path):
    root = make_clothing1m(tmp_path / "clothing", lists={"clean_test_key_list.txt": ["t0", "c2"]})
    with pytest.raises(DatasetError, match=r"clean_test_key_list\.txt, line 2: key .*c2\.jpg' is also in "
                                           r".*clean_val_key_list\.txt, line 2"):
        read_clothing1m(root)


def test_clothing1m_missing_image_and_crlf(tmp_path):
    root = make_clothing1m(tmp_path / "clothing")
    path = os.path.join(root, "noisy_train_key_list.txt")
    write_lines(path, [clothing_key(k) for k in CLOTHING_LISTS["noisy_train_key_list.txt"]], crlf=True)
    assert len(read_clothing1m(root)) == len(CLOTHING_EXPECTED)
    os.remove(os.path.join(root, clothing_key("n2")))
    with pytest.raises(DatasetError, match=r"1 listed image.*n2\.jpg \(.*noisy_train_key_list\.txt, line 3\)"):
        read_clothing1m(root)
    assert len(read_clothing1m(root, check_images=False)) == len(CLOTHING_EXPECTED)


def test_clothing1m_class_without_noisy_rows(tmp_path):
    noisy = {**CLOTHING_NOISY, "n2": 0, "c2": 0}
    root = make_clothing1m(tmp_path / "clothing", noisy=noisy)
    with pytest.raises(DatasetError, match=r"'Down Coat' \(.*category_names_eng\.txt, line 3\)"):
        read_clothing1m(root)


def test_clothing1m_key_leaving_the_root_is_refused(tmp_path):
    root = tmp_path / "clothing"
    _write(root / "category_names_eng.txt", "T-Shirt\nShirt\n")
    _write(root / "noisy_label_kv.txt", "images/a.jpg 0\n../../etc/hostname 1\n")
    _write(root / "clean_label_kv.txt", "images/a.jpg 0\n")
    _write(root / "noisy_train_key_list.txt", "images/a.jpg\n../../etc/hostname\n")
    for name in ("clean_train_key_list.txt", "clean_val_key_list.txt", "clean_test_key_list.txt"):
        _write(root / name, "\n")
    with pytest.raises(DatasetError, match=r"noisy_train_key_list\.txt, line 2: key '\.\./\.\./etc/hostname' leaves"):
        read_clothing1m(str(root), check_images=False)
