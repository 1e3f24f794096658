"""The Food-101N reader (cleannet_tf/data/food101n.py) on tiny release trees under tmp_path (8x8 JPEGs)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import FOOD_CLASSES, FOOD_KEYS, FOOD_VERIFIED_TRAIN, make_food101n, write_lines
from error_helpers import _food101n, _write

from cleannet_tf.data import table as data_table
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.data.table import SPLIT_TEST, UNKNOWN, DatasetError


def test_food101n_happy_path(tmp_path):
    root = make_food101n(tmp_path / "food")
    table = read_food101n(root)
    assert table.class_names == tuple(FOOD_CLASSES)
    assert table.keys.tolist() == FOOD_KEYS
    assert table.paths.tolist() == [os.path.join(root, "images", k) for k in FOOD_KEYS]
    np.testing.assert_array_equal(table.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(table.verification, [1, 0, 1, 1, -1, -1, 1, 0, -1])
    np.testing.assert_array_equal(table.split, [0, 0, 1, 0, 0, 0, 0, 1, 0])
    assert table.labels.dtype == np.int32 and table.verification.dtype == np.int8 and table.split.dtype == np.int8
    np.testing.assert_array_equal(table.heldout_classes, [False, False, False])
    assert table.skipped == {}
    assert len(table) == 9 and table.num_classes == 3
    assert "train 7 (verified 4: 3 correct, 1 wrong)" in table.summary()


def test_food101n_crlf_blank_lines_and_no_classes_header(tmp_path):
    root = make_food101n(tmp_path / "food", crlf=True)
    expected = read_food101n(root)
    write_lines(os.path.join(root, "meta", "classes.txt"), ["", *FOOD_CLASSES, "", ""], crlf=True)
    write_lines(os.path.join(root, "meta", "imagelist.tsv"), ["class_name/key", "", *FOOD_KEYS, "  "], crlf=True)
    table = read_food101n(root)
    assert table.class_names == tuple(FOOD_CLASSES)
    assert table.keys.tolist() == expected.keys.tolist() == FOOD_KEYS
    np.testing.assert_array_equal(table.verification, expected.verification)


def test_food101n_test_set_under_root(tmp_path):
    root = make_food101n(tmp_path / "food", test=["ramen/t1", "apple_pie/t2"])
    table = read_food101n(root)
    assert table.keys.tolist()[-2:] == ["test/ramen/t1", "test/apple_pie/t2"]
    assert table.paths.tolist()[-2:] == [os.path.join(root, "test", "ramen", "t1.jpg"),
                                         os.path.join(root, "test", "apple_pie", "t2.jpg")]
    np.testing.assert_array_equal(table.labels[-2:], [2, 0])
    np.testing.assert_array_equal(table.split[-2:], [SPLIT_TEST, SPLIT_TEST])
    np.testing.assert_array_equal(table.verification[-2:], [UNKNOWN, UNKNOWN])


def test_food101n_test_set_under_test_root(tmp_path):
    food101 = tmp_path / "food-101"
    root = make_food101n(tmp_path / "food", test=["baklava/t1"], test_dir=str(food101 / "images"))
    table = read_food101n(root, test_root=str(food101))
    assert table.paths[-1] == os.path.join(str(food101), "images", "baklava", "t1.jpg")
    assert table.split[-1] == SPLIT_TEST and table.labels[-1] == 1


def test_food101n_test_list_without_images_dir(tmp_path):
    root = make_food101n(tmp_path / "food")
    write_lines(os.path.join(root, "meta", "test.txt"), ["ramen/t1"])
    with pytest.raises(DatasetError, match=r"test\.txt lists test images .*data\.test_root"):
        read_food101n(root)


def test_food101n_test_list_unknown_class(tmp_path):
    root = make_food101n(tmp_path / "food", test=["ramen/t1", "pizza/t2"])
    with pytest.raises(DatasetError, match=r"test\.txt, line 2: unknown class 'pizza'"):
        read_food101n(root)


def test_food101n_verified_key_absent_from_imagelist_is_counted(tmp_path, caplog):
    # kuanghuei/clean-net issue #1: a verified_train key that imagelist.tsv does not list.
    caplog.set_level("WARNING")
    quirk = "ramen/a49e6fb.jpg"
    root = make_food101n(tmp_path / "food", verified_train=[*FOOD_VERIFIED_TRAIN, (quirk, 1)])
    table = read_food101n(root)
    assert quirk not in table.keys.tolist()
    assert table.skipped == {"verified_train.tsv rows whose key is not in imagelist.tsv": 1}
    assert "verified_train.tsv, line 6" in caplog.text and quirk in caplog.text
    assert int(np.count_nonzero(table.verification != UNKNOWN)) == 6


@pytest.mark.parametrize("name", ["classes.txt", "imagelist.tsv", "verified_train.tsv", "verified_val.tsv"])
def test_food101n_missing_file(tmp_path, name):
    root = make_food101n(tmp_path / "food")
    path = os.path.join(root, "meta", name)
    os.remove(path)
    with pytest.raises(DatasetError, match=f"{path}: file not found"):
        read_food101n(root)


def test_food101n_unknown_class_in_imagelist(tmp_path):
    root = make_food101n(tmp_path / "food", keys=[*FOOD_KEYS[:3], "pizza/p0.jpg", *FOOD_KEYS[3:]], images=False)
    with pytest.raises(DatasetError, match=r"imagelist\.tsv, line 5: unknown class 'pizza'"):
        read_food101n(root, check_images=False)


def test_food101n_malformed_imagelist_line(tmp_path):
    root = make_food101n(tmp_path / "food", keys=[*FOOD_KEYS, "ramen"], images=False)
    with pytest.raises(DatasetError, match=r"imagelist\.tsv, line 11: expected 'class/key\.jpg'"):
        read_food101n(root, check_images=False)


def test_food101n_duplicate_key_in_imagelist(tmp_path):
    root = make_food101n(tmp_path / "food", keys=[*FOOD_KEYS, FOOD_KEYS[1]])
    with pytest.raises(DatasetError, match=r"imagelist\.tsv, line 11: duplicate key 'apple_pie/a1\.jpg' .*line 3"):
        read_food101n(root)


def test_food101n_duplicate_class(tmp_path):
    root = make_food101n(tmp_path / "food")
    write_lines(os.path.join(root, "meta", "classes.txt"), ["class_name", *FOOD_CLASSES, "baklava"])
    with pytest.raises(DatasetError, match=r"classes\.txt, line 5: duplicate class 'baklava' \(also on line 3\)"):
        read_food101n(root)


def test_food101n_bad_verification_label(tmp_path):
    root = make_food101n(tmp_path / "food", verified_train=[("apple_pie/a0.jpg", 1), ("apple_pie/a1.jpg", 2)])
    with pytest.raises(DatasetError, match=r"verified_train\.tsv, line 3: verification label must be 0 or 1"):
        read_food101n(root)


def test_food101n_verified_line_without_label(tmp_path):
    root = make_food101n(tmp_path / "food")
    write_lines(os.path.join(root, "meta", "verified_val.tsv"), ["class_name/key\tverification_label", "ramen/r1.jpg"])
    with pytest.raises(DatasetError, match=r"verified_val\.tsv, line 2: expected 'class/key\.jpg<TAB>0\|1'"):
        read_food101n(root)


def test_food101n_duplicate_verified_key(tmp_path):
    root = make_food101n(tmp_path / "food", verified_val=[("ramen/r1.jpg", 0), ("ramen/r1.jpg", 1)])
    with pytest.raises(DatasetError, match=r"verified_val\.tsv, line 3: duplicate key 'ramen/r1\.jpg' .*line 2"):
        read_food101n(root)


def test_food101n_key_in_both_verified_lists(tmp_path):
    root = make_food101n(tmp_path / "food", verified_val=[("ramen/r1.jpg", 0), ("baklava/b0.jpg", 1)])
    with pytest.raises(DatasetError, match=r"verified_val\.tsv, line 3: key 'baklava/b0\.jpg' is in both verified "
                                           r"lists \(also .*verified_train\.tsv, line 4\)"):
        read_food101n(root)


def test_food101n_empty_class(tmp_path):
    keys = [k for k in FOOD_KEYS if not k.startswith("baklava/")]
    root = make_food101n(tmp_path / "food", keys=keys, verified_train=[("ramen/r0.jpg", 1)], verified_val=[])
    with pytest.raises(DatasetError, match=r"1 class\(es\) have no image .*'baklava' \(.*classes\.txt, line 3\)"):
        read_food101n(root)


def test_food101n_missing_images_reported_together(tmp_path):
    root = make_food101n(tmp_path / "food")
    for key in FOOD_KEYS[:7]:
        os.remove(os.path.join(root, "images", key))
    with pytest.raises(DatasetError, match=r"^7 listed image\(s\) not found on disk\. First 5: ") as info:
        read_food101n(root)
    message = str(info.value)
    assert f"{os.path.join(root, 'images', FOOD_KEYS[0])} (" in message
    assert "imagelist.tsv, line 2)" in message and "imagelist.tsv, line 6)" in message
    assert "line 7)" not in message  # only the first 5 are named
    assert len(read_food101n(root, check_images=False)) == 9


def test_food101n_missing_test_image(tmp_path):
    root = make_food101n(tmp_path / "food", test=["ramen/t1", "ramen/t2"])
    os.remove(os.path.join(root, "test", "ramen", "t2.jpg"))
    with pytest.raises(DatasetError, match=r"1 listed image.*t2\.jpg \(.*test\.txt, line 2\)"):
        read_food101n(root)


def test_food101n_heldout_list(tmp_path):
    root = make_food101n(tmp_path / "food")
    heldout = os.path.join(root, "meta", "classes_heldout_1.txt")
    write_lines(heldout, ["class_name\tkeep", "apple_pie\t0", "baklava\t1", "ramen\t1"])
    table = read_food101n(root, heldout_list=heldout)
    np.testing.assert_array_equal(table.heldout_classes, [True, False, False])
    # apple_pie loses its two verified train rows; its verified val row (a2) stays.
    np.testing.assert_array_equal(table.verification, [-1, -1, 1, 1, -1, -1, 1, 0, -1])
    np.testing.assert_array_equal(table.split, [0, 0, 1, 0, 0, 0, 0, 1, 0])
    assert table.keys.tolist() == FOOD_KEYS  # images kept
    assert table.skipped == {data_table.HELDOUT_SKIP_REASON: 2}


@pytest.mark.parametrize("key", ["three/../../../../etc/hostname", "three/../../x.jpg"])
def test_food101n_key_leaving_the_root_is_refused_with_file_and_line(tmp_path, key):
    root = _food101n(tmp_path / "food", ["three/a.jpg", "four/b.jpg", key])
    with pytest.raises(DatasetError, match=rf"imagelist\.tsv, line 4: key '{key}' leaves the dataset root"):
        read_food101n(root, check_images=False)


def test_keys_inside_the_root_and_symlinks_are_fine(tmp_path):
    outside = _write(tmp_path / "elsewhere" / "real.jpg", "x")
    keys = ["three/a.jpg", "four/b.jpg", "three/sub/../c.jpg", "four/link.jpg"]
    root = _food101n(tmp_path / "food", keys)
    for key in keys[:3]:
        _write(os.path.join(root, "images", os.path.normpath(key)), "x")
    os.makedirs(os.path.join(root, "images", "three", "sub"))
    os.symlink(outside, os.path.join(root, "images", "four", "link.jpg"))  # a link may point anywhere
    table = read_food101n(root, check_images=True)
    assert table.keys.tolist() == [os.path.normpath(key) for key in keys]  # keys in their one spelling
