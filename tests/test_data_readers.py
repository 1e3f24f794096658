"""data/: the three readers, held-out lists, precomputed features; pipeline/table.py: load_table.

Each test builds a tiny tree in the real release layout under tmp_path (8x8 JPEGs).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import FOOD_CLASSES, FOOD_KEYS, FOOD_VERIFIED_TRAIN, make_food101n, write_jpeg, write_lines

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.data.clothing1m import read_clothing1m
from cleannet_tf.data.features_npz import load_precomputed_features
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, UNKNOWN, DatasetError
from cleannet_tf.data.tsv import read_tsv
from cleannet_tf.pipeline.table import load_table


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


# --------------------------------------------------------------------------- held-out lists


def test_read_heldout_list_with_header(tmp_path):
    path = str(tmp_path / "classes_heldout_1.txt")
    write_lines(path, ["class_name\theldout", "apple_pie\t1", "", "baklava\t0", "ramen\t1"], crlf=True)
    np.testing.assert_array_equal(data_table.read_heldout_list(path, FOOD_CLASSES), [False, True, False])


def test_read_heldout_list_without_header_and_unlisted_class_kept(tmp_path):
    path = str(tmp_path / "heldout.txt")
    write_lines(path, ["ramen\t0", "apple_pie\t1"])
    np.testing.assert_array_equal(data_table.read_heldout_list(path, FOOD_CLASSES), [False, False, True])


def test_read_heldout_list_class_names_with_spaces(tmp_path):
    path = str(tmp_path / "heldout.txt")
    write_lines(path, ["Down Coat\t0", "T-Shirt 1"])
    np.testing.assert_array_equal(data_table.read_heldout_list(path, ["T-Shirt", "Down Coat"]), [False, True])


@pytest.mark.parametrize("lines, pattern", [
    (["class_name\tkeep", "apple_pie\t1", "pizza\t0"], r"heldout\.txt, line 3: unknown class 'pizza'"),
    (["apple_pie\t1", "baklava\t2"], r"heldout\.txt, line 2: expected 'class<TAB>0'"),
    (["apple_pie\t1", "ramen\t0", "apple_pie\t0"], r"heldout\.txt, line 3: class 'apple_pie' listed twice .*line 1"),
])
def test_read_heldout_list_errors(tmp_path, lines, pattern):
    path = str(tmp_path / "heldout.txt")
    write_lines(path, lines)
    with pytest.raises(DatasetError, match=pattern):
        data_table.read_heldout_list(path, FOOD_CLASSES)


def test_read_heldout_list_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    with pytest.raises(DatasetError, match=f"{path}: file not found"):
        data_table.read_heldout_list(path, FOOD_CLASSES)


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


def test_apply_heldout_returns_new_table(tmp_path):
    table = read_food101n(make_food101n(tmp_path / "food"))
    before = table.verification.copy()
    new = data_table.apply_heldout(table, np.array([False, False, True]))
    np.testing.assert_array_equal(table.verification, before)  # input unchanged
    assert table.skipped == {}
    np.testing.assert_array_equal(new.verification, [1, 0, 1, 1, -1, -1, -1, 0, -1])
    assert new.skipped == {"verified_train rows of held-out classes": 1}
    with pytest.raises(ValueError, match=r"\(3,\) bool"):
        data_table.apply_heldout(table, np.array([True, False]))


# --------------------------------------------------------------------------- Clothing1M fixture

CLOTHING_CLASSES = ["T-Shirt", "Shirt", "Down Coat"]
CLOTHING_NOISY = {"n0": 0, "n1": 1, "n2": 2, "n3": 0, "n4": 1, "c0": 1, "c2": 2}
CLOTHING_CLEAN = {"n0": 0, "n1": 2, "n3": 1, "c0": 1, "c1": 0, "c2": 0, "c3": 2, "t0": 2}
CLOTHING_LISTS = {
    "noisy_train_key_list.txt": ["n0", "n1", "n2", "n3", "n4"],
    "clean_train_key_list.txt": ["n0", "c0", "c1"],
    "clean_val_key_list.txt": ["n1", "c2", "c3"],
    "clean_test_key_list.txt": ["n3", "t0"],
}


def clothing_key(name: str) -> str:
    return f"images/{len(name)}/{name[0]}0/{name}.jpg"


def make_clothing1m(root, *, subdir: str = "", noisy=None, clean=None, lists=None, images: bool = True):
    """Writes a Clothing1M release tree (annotation files in ROOT/subdir); returns its root (str)."""
    root = str(root)
    noisy = CLOTHING_NOISY if noisy is None else noisy
    clean = CLOTHING_CLEAN if clean is None else clean
    lists = {**CLOTHING_LISTS, **(lists or {})}
    annotations = os.path.join(root, subdir)
    write_lines(os.path.join(annotations, "category_names_eng.txt"), CLOTHING_CLASSES)
    write_lines(os.path.join(annotations, "noisy_label_kv.txt"), [f"{clothing_key(k)} {v}" for k, v in noisy.items()])
    write_lines(os.path.join(annotations, "clean_label_kv.txt"), [f"{clothing_key(k)} {v}" for k, v in clean.items()])
    for name, names in lists.items():
        write_lines(os.path.join(annotations, name), [clothing_key(k) for k in names])
    if images:
        for name in set(noisy) | set(clean):
            write_jpeg(os.path.join(root, clothing_key(name)))
    return root


CLOTHING_EXPECTED = [  # name, label, verification, split
    ("n0", 0, 1, SPLIT_TRAIN), ("n1", 1, 0, SPLIT_VAL), ("n2", 2, -1, SPLIT_TRAIN), ("n4", 1, -1, SPLIT_TRAIN),
    ("c0", 1, 1, SPLIT_TRAIN), ("c2", 2, 0, SPLIT_VAL), ("n3", 1, -1, SPLIT_TEST), ("t0", 2, -1, SPLIT_TEST),
]


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


# --------------------------------------------------------------------------- generic TSV


def make_tsv(folder, lines, *, images=(), crlf: bool = False) -> str:
    """Writes folder/data.tsv with `lines` and the JPEGs `images` (paths relative to folder); returns the tsv path."""
    path = os.path.join(str(folder), "data.tsv")
    write_lines(path, lines, crlf=crlf)
    for image in images:
        write_jpeg(os.path.join(str(folder), image))
    return path


def test_tsv_column_order_relative_and_absolute_paths(tmp_path):
    absolute = str(tmp_path / "elsewhere" / "x.jpg")
    write_jpeg(absolute)
    path = make_tsv(tmp_path / "data", [
        "split\tlabel\tnote\tverified\tpath",
        "train\tdog\tanything\t1\timgs/a.jpg",
        "val\tcat\t\t0\timgs/b.jpg",
        "\tdog\t\t\tc.jpg",
        "test\tbird\tx\t\t" + absolute,
    ], images=["imgs/a.jpg", "imgs/b.jpg", "c.jpg"])
    table = read_tsv(path)
    folder = str(tmp_path / "data")
    assert table.class_names == ("bird", "cat", "dog")
    assert table.keys.tolist() == ["imgs/a.jpg", "imgs/b.jpg", "c.jpg", absolute]
    assert table.paths.tolist() == [os.path.join(folder, "imgs", "a.jpg"), os.path.join(folder, "imgs", "b.jpg"),
                                    os.path.join(folder, "c.jpg"), absolute]
    np.testing.assert_array_equal(table.labels, [2, 1, 2, 0])
    np.testing.assert_array_equal(table.verification, [1, 0, -1, -1])
    np.testing.assert_array_equal(table.split, [SPLIT_TRAIN, SPLIT_VAL, SPLIT_TRAIN, SPLIT_TEST])
    assert table.skipped == {}


def test_tsv_minimal_columns_class_names_and_crlf(tmp_path):
    path = make_tsv(tmp_path, ["label\tpath", "", "b\t1.jpg", "a\t2.jpg", ""], images=["1.jpg", "2.jpg"], crlf=True)
    table = read_tsv(path, class_names=["b", "a", "unused"])
    assert table.class_names == ("b", "a", "unused")
    np.testing.assert_array_equal(table.labels, [0, 1])
    np.testing.assert_array_equal(table.verification, [UNKNOWN, UNKNOWN])
    np.testing.assert_array_equal(table.split, [SPLIT_TRAIN, SPLIT_TRAIN])


def test_tsv_short_row_padded_with_empty_optional_fields(tmp_path):
    path = make_tsv(tmp_path, ["path\tlabel\tverified\tsplit", "a.jpg\tdog"], images=["a.jpg"])
    table = read_tsv(path)
    assert table.verification.tolist() == [UNKNOWN] and table.split.tolist() == [SPLIT_TRAIN]


@pytest.mark.parametrize("lines, pattern", [
    (["path\tclass", "a.jpg\tdog"], r"data\.tsv, line 1: header lacks column\(s\) label"),
    (["path\tlabel\tpath", "a.jpg\tdog\ta.jpg"], r"data\.tsv, line 1: column 'path' appears twice"),
    (["path\tlabel\tverified", "a.jpg\tdog\t1", "b.jpg\tdog\tyes"], r"data\.tsv, line 3: verified must be 1, 0"),
    (["path\tlabel\tsplit", "a.jpg\tdog\ttrain", "", "b.jpg\tdog\tvalid"], r"data\.tsv, line 4: split must be"),
    (["path\tlabel", "a.jpg\tdog", "a.jpg\tcat"], r"data\.tsv, line 3: duplicate path 'a\.jpg' \(also on line 2\)"),
    (["path\tlabel", "a.jpg\tdog", "b.jpg\tdog\textra"], r"data\.tsv, line 3: 3 tab-separated fields"),
    (["path\tlabel", "a.jpg\t"], r"data\.tsv, line 2: empty label"),
    (["path\tlabel\tsplit\tverified", "a.jpg\tdog\ttest\t1"], r"data\.tsv, line 2: a test row's label is ground"),
    (["path\tlabel"], r"data\.tsv: no data rows"),
    ([""], r"data\.tsv: empty file"),
])
def test_tsv_errors(tmp_path, lines, pattern):
    path = make_tsv(tmp_path, lines)
    with pytest.raises(DatasetError, match=pattern):
        read_tsv(path, check_images=False)


def test_tsv_unknown_class_with_class_names(tmp_path):
    path = make_tsv(tmp_path, ["path\tlabel", "a.jpg\tdog", "b.jpg\tcow"])
    with pytest.raises(DatasetError, match=r"data\.tsv, line 3: unknown class 'cow'"):
        read_tsv(path, check_images=False, class_names=["dog", "cat"])


def test_tsv_missing_image_and_missing_file(tmp_path):
    path = make_tsv(tmp_path, ["path\tlabel", "a.jpg\tdog", "b.jpg\tdog"], images=["a.jpg"])
    with pytest.raises(DatasetError, match=r"1 listed image.*b\.jpg \(.*data\.tsv, line 3\)"):
        read_tsv(path)
    missing = str(tmp_path / "nope.tsv")
    with pytest.raises(DatasetError, match=f"{missing}: file not found"):
        read_tsv(missing)


# --------------------------------------------------------------------------- load_table


def make_config(data_format: str, root: str, **data_fields):
    config = config_lib.default_config()
    config.data.format = data_format
    config.data.root = root
    for name, value in data_fields.items():
        config.data[name] = value
    return config


def test_load_table_dispatches_and_applies_heldout_list(tmp_path):
    root = make_food101n(tmp_path / "food")
    heldout = str(tmp_path / "heldout.txt")
    write_lines(heldout, ["ramen\t0"])
    table = load_table(make_config("food101n", root, heldout_list=heldout), str(tmp_path / "work"))
    np.testing.assert_array_equal(table.heldout_classes, [False, False, True])
    assert table.skipped == {data_table.HELDOUT_SKIP_REASON: 1}

    clothing = make_clothing1m(tmp_path / "clothing")
    heldout = str(tmp_path / "heldout_clothing.txt")
    write_lines(heldout, ["class\tkeep", "T-Shirt\t0", "Shirt\t1", "Down Coat\t1"])
    table = load_table(make_config("clothing1m", clothing, heldout_list=heldout), str(tmp_path))
    assert len(table) == len(CLOTHING_EXPECTED)
    assert table.verification[0] == UNKNOWN and table.skipped[data_table.HELDOUT_SKIP_REASON] == 1

    tsv = make_tsv(tmp_path / "tsv", ["path\tlabel", "a.jpg\tdog"])
    table = load_table(make_config("tsv", tsv, check_images=False), str(tmp_path))
    assert table.keys.tolist() == ["a.jpg"]


def test_load_table_food101n_test_root_and_check_images(tmp_path):
    food101 = tmp_path / "food-101"
    root = make_food101n(tmp_path / "food", test=["ramen/t1"], test_dir=str(food101 / "images"))
    config = make_config("food101n", root, test_root=str(food101))
    assert load_table(config, str(tmp_path)).paths[-1] == str(food101 / "images" / "ramen" / "t1.jpg")
    os.remove(os.path.join(root, "images", FOOD_KEYS[0]))
    with pytest.raises(DatasetError, match="not found on disk"):
        load_table(config, str(tmp_path))
    config.data.check_images = False
    assert len(load_table(config, str(tmp_path))) == 10


def test_load_table_real_demo_data(tmp_path):
    config = make_config("food101n", "", demo="digits", demo_images_per_class=20, demo_heldout=2)
    table = load_table(config, str(tmp_path))
    assert table.num_classes == 10 and len(table) > 0
    assert int(table.heldout_classes.sum()) == 2
    imagelist = tmp_path / "demo_data" / "meta" / "imagelist.tsv"
    stamp = imagelist.stat().st_mtime_ns
    # Another held-out count on the same data: the list is added, the data is not regenerated.
    config.data.demo_heldout = 4
    table = load_table(config, str(tmp_path))
    assert int(table.heldout_classes.sum()) == 4 and imagelist.stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- precomputed features


def small_table(keys) -> data_table.LabelTable:
    n = len(keys)
    return data_table.LabelTable(keys=np.array(keys, dtype=str), paths=np.array(keys, dtype=str), class_names=("a",),
                               labels=np.zeros(n, np.int32), verification=np.full(n, -1, np.int8),
                               split=np.zeros(n, np.int8), heldout_classes=np.zeros(1, bool))


def test_load_precomputed_features_aligns_to_table(tmp_path, caplog):
    caplog.set_level("INFO")
    path = str(tmp_path / "f.npz")
    file_keys = np.array(["c", "extra", "a", "b"])
    features = np.arange(8, dtype=np.float64).reshape(4, 2)
    np.savez(path, keys=file_keys, features=features)
    aligned, valid = load_precomputed_features(path, small_table(["a", "b", "c"]))
    assert aligned.dtype == np.float32 and aligned.shape == (3, 2) and valid.all()
    np.testing.assert_array_equal(aligned, [[4, 5], [6, 7], [0, 1]])
    assert "1 keys not in the dataset" in caplog.text
    np.savez(path, keys=np.char.encode(file_keys), features=features)  # bytes keys work too
    np.testing.assert_array_equal(load_precomputed_features(path, small_table(["b"]))[0], [[6, 7]])


def test_an_uncompressed_features_npz_is_memory_mapped_not_read_twice(tmp_path):
    import tracemalloc

    from cleannet_tf.data.features_npz import load_npz

    n, d = 100_000, 256
    features = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    keys = np.array([f"k{i:06d}" for i in range(n)])
    stored, compressed = str(tmp_path / "stored.npz"), str(tmp_path / "compressed.npz")
    np.savez(stored, keys=keys[::-1], features=features[::-1])
    np.savez_compressed(compressed, keys=keys, features=features)
    assert isinstance(load_npz(stored, mmap=("features",))["features"], np.memmap)
    assert not isinstance(load_npz(compressed, mmap=("features",))["features"], np.memmap)
    table = data_table.LabelTable(keys=keys, paths=keys, class_names=("a",), labels=np.zeros(n, np.int32),
                                verification=np.full(n, -1, np.int8), split=np.zeros(n, np.int8),
                                heldout_classes=np.zeros(1, bool))
    peaks = {}
    for path in (stored, compressed):
        tracemalloc.start()
        aligned, _ = load_precomputed_features(path, table)
        peaks[path] = tracemalloc.get_traced_memory()[1] / features.nbytes
        tracemalloc.stop()
        np.testing.assert_array_equal(aligned, features)
        del aligned
    # The aligned copy, one block and the keys; reading the file whole adds a second copy of the features.
    assert peaks[stored] < 1.8 and peaks[compressed] - peaks[stored] > 0.9, peaks


@pytest.mark.parametrize("keys, features, pattern", [
    (["a", "b"], np.zeros((2, 3)), r"2 of the dataset's 4 train/val keys have no features, e\.g\. \['x', 'y'\]"),
    (["a", "b", "x", "y"], np.zeros(4), r"'features' must be 2-D"),
    (["a", "b", "x", "y"], np.zeros((3, 2)), r"4 keys but 3 feature rows"),
    (["a", "b", "x", "y", "b"], np.zeros((5, 2)), r"1 duplicate key\(s\), e\.g\. 'b'"),
    (["a", "b", "x", "y"], np.array([[0.0], [1.0], [np.inf], [np.nan]]), r"features of key 'x' contain NaN or Inf"),
])
def test_load_precomputed_features_errors(tmp_path, keys, features, pattern):
    path = str(tmp_path / "f.npz")
    np.savez(path, keys=np.array(keys), features=features)
    with pytest.raises(DatasetError, match=pattern):
        load_precomputed_features(path, small_table(["a", "x", "b", "y"]))


def test_load_precomputed_features_bad_files(tmp_path):
    table = small_table(["a"])
    missing = str(tmp_path / "missing.npz")
    with pytest.raises(DatasetError, match=f"{missing}: file not found"):
        load_precomputed_features(missing, table)
    path = str(tmp_path / "f.npz")
    np.savez(path, keys=np.array(["a"]), feats=np.zeros((1, 2)))
    with pytest.raises(DatasetError, match=r"lacks array\(s\) features"):
        load_precomputed_features(path, table)
    np.savez(path, keys=np.array(["a"], dtype=object), features=np.zeros((1, 2)))
    with pytest.raises(DatasetError, match="holds Python objects"):
        load_precomputed_features(path, table)
