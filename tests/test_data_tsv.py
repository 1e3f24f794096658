"""data/tsv.py: read_tsv and read_csv (the TSV columns, comma-separated, quoted as Python's csv module reads
them), and keys in their one spelling (data/reading.py normalize_key) across the readers; tiny tables and small
real images under tmp_path.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import FOOD_KEYS, make_food101n, make_tsv, write_jpeg, write_lines
from error_helpers import _tsv, _write
from test_data_folder import make_folder, write_file

from cleannet_tf.data.food101n import apply_extra_verified, read_food101n
from cleannet_tf.data.reading import DatasetError, normalize_key
from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, UNKNOWN
from cleannet_tf.data.tsv import read_csv, read_tsv


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


def test_non_utf8_line_names_the_line(tmp_path):
    tsv = _write(tmp_path / "labels.tsv", "path\tlabel\na.jpg\tcat\n", "w")
    _write(tsv, b"b\xe9.jpg\tcat\nc.jpg\tdog\n", "ab")
    with pytest.raises(DatasetError) as error:
        read_tsv(tsv, check_images=False)
    assert str(error.value).startswith(f"{tsv}, line 3: not UTF-8 text")
    assert "position" not in str(error.value)


def test_tsv_relative_path_leaving_its_folder_is_refused(tmp_path):
    tsv = _tsv(tmp_path / "data", ["a.jpg\tcat\t\t", "../../etc/hostname\tcat\t\t"])
    with pytest.raises(DatasetError, match=r"labels\.tsv, line 3: path '\.\./\.\./etc/hostname' leaves the file's "
                                           "folder"):
        read_tsv(tsv, check_images=False)



def test_csv_reads_the_tsv_columns_with_quoting(tmp_path):
    make_folder(tmp_path, ["img/a.jpg", "img/big, dog.jpg", "img/c.jpg", "img/d.jpg"])
    text = ('\ufeffnote,label,path,split,verified\r\n'
            'first,cat,img/a.jpg,train,1\r\n'
            '\r\n'
            '"says ""hi""",dog,"img/big, dog.jpg",val,0\r\n'
            ' , cat ,  img/c.jpg  ,,\r\n'
            'x,dog,img/d.jpg,test\r\n')
    path = write_file(tmp_path / "labels.csv", text.encode("utf-8"))
    table = read_csv(path)
    assert table.class_names == ("cat", "dog")
    assert table.keys.tolist() == ["img/a.jpg", "img/big, dog.jpg", "img/c.jpg", "img/d.jpg"]
    assert table.paths[1] == os.path.join(str(tmp_path), "img", "big, dog.jpg")
    np.testing.assert_array_equal(table.labels, [0, 1, 0, 1])
    np.testing.assert_array_equal(table.verification, [1, 0, UNKNOWN, UNKNOWN])
    np.testing.assert_array_equal(table.split, [SPLIT_TRAIN, SPLIT_VAL, SPLIT_TRAIN, SPLIT_TEST])
    # The same rows as a TSV give the same table.
    tsv = str(tmp_path / "labels.tsv")
    write_lines(tsv, ["path\tlabel\tverified\tsplit", "img/a.jpg\tcat\t1\ttrain", "img/big, dog.jpg\tdog\t0\tval",
                      "img/c.jpg\tcat\t\t", "img/d.jpg\tdog\t\ttest"])
    same = read_tsv(tsv)
    for field in ("keys", "paths", "labels", "verification", "split"):
        np.testing.assert_array_equal(getattr(table, field), getattr(same, field))


def test_csv_line_numbers_count_quoted_line_breaks(tmp_path):
    # A row whose quoted note runs over two lines: the next row's error names its own first line (5).
    path = write_file(tmp_path / "l.csv", b'path,label,verified,note\na.jpg,cat,1,"two\nlines"\n\nb.jpg,cat,yes,\n')
    with pytest.raises(DatasetError, match=r"l\.csv, line 5: verified must be 1, 0 or empty\. Got: 'yes'"):
        read_csv(path, check_images=False)


@pytest.mark.parametrize("data, pattern", [
    (b"path,verified\na.jpg,1\n", r"l\.csv, line 1: header lacks column\(s\) label\. Got comma-separated columns"),
    (b"path\tlabel\na.jpg\tcat\n", r"l\.csv, line 1: header lacks column\(s\) path, label\..* is the file "
                                   r"tab-separated\? Then set data\.format=tsv"),
    (b"path,label,verified\na.jpg,cat,yes\n", r"l\.csv, line 2: verified must be 1, 0 or empty\. Got: 'yes'"),
    (b"path,label\na.jpg,cat,extra\n", r"l\.csv, line 2: 3 comma-separated fields but the header has 2"),
    (b"path,label\n../../etc/hostname,cat\n", r"l\.csv, line 2: path '\.\./\.\./etc/hostname' leaves the file's "
                                              r"folder"),
    (b"path,label\na.jpg,\n", r"l\.csv, line 2: empty label"),
    (b"path,label\na.jpg,cat\nb.jpg,cat\n\"c.jpg,dog\n", r"l\.csv, line 4: not readable as CSV: unexpected end "
                                                         r"of data \(an unclosed quote\?\)"),
    (b"path,label\n\"a\"b.jpg,cat\n", r"l\.csv, line 2: not readable as CSV: ',' expected after '\"'"),
    (b"path,label\na.jpg,\"ca\nt\"\n", r"l\.csv, line 2: label 'ca\\nt' holds a tab or a line break"),
    (b"path,label\na.jpg,caf\xe9\n", r"l\.csv, line 2: not UTF-8 text \(byte b'\\xe9' cannot be decoded\)"),
    ("path,label\na.jpg,cat\n".encode("utf-16"), r"l\.csv, line 1: UTF-16 text .*save the file as UTF-8"),
    (b"path,label,split,verified\nt.jpg,cat,test,1\n", r"l\.csv, line 2: a test row's label is ground truth"),
    (b"path,label,split\nt.jpg,cat,dev\n", r"l\.csv, line 2: split must be train, val or test\. Got: 'dev'"),
    (b"path,label\n\"a\tb.jpg\",cat\n", r"l\.csv, line 2: key 'a\\tb\.jpg' holds a tab or a line break"),
    (b"", r"l\.csv: empty file \(expected a header with columns path, label"),
    (b"path,label\n", r"l\.csv: no data rows after the header"),
])
def test_csv_bad_input_names_file_and_line(tmp_path, data, pattern):
    path = write_file(tmp_path / "l.csv", data)
    with pytest.raises(DatasetError, match=pattern):
        read_csv(path, check_images=False)


def test_csv_missing_image_and_missing_file(tmp_path):
    make_folder(tmp_path, ["a.jpg"])
    path = write_file(tmp_path / "l.csv", b"path,label\na.jpg,cat\nb.jpg,cat\n")
    with pytest.raises(DatasetError, match=r"1 listed image.*b\.jpg \(.*l\.csv, line 3\)"):
        read_csv(path)
    with pytest.raises(DatasetError, match=r"nope\.csv: file not found \(expected a \.csv file"):
        read_csv(str(tmp_path / "nope.csv"))


# --------------------------------------------------------------------------- keys in one spelling


def test_one_file_spelled_two_ways_is_one_key(tmp_path):
    # ./images/x.jpg and images//x.jpg name one file: listed in train and in val it is refused, not two rows.
    path = str(tmp_path / "labels.tsv")
    write_lines(path, ["path\tlabel\tverified\tsplit", "./images/x.jpg\tcat\t1\ttrain", "images/y.jpg\tcat\t\t",
                       "images//x.jpg\tcat\t0\tval"])
    with pytest.raises(DatasetError, match=r"labels\.tsv, line 4: duplicate path 'images//x\.jpg' \(also on line 2, "
                                           r"written '\./images/x\.jpg': the same file\)"):
        read_tsv(path, check_images=False)
    write_lines(path, ["path\tlabel", "./images/x.jpg\tcat", "images/sub/..//y.jpg\tcat", "/abs//z.jpg\tcat"])
    table = read_tsv(path, check_images=False)
    assert table.keys.tolist() == ["images/x.jpg", "images/y.jpg", "/abs/z.jpg"]
    assert table.paths[0] == os.path.join(str(tmp_path), "images", "x.jpg")


def test_food101n_verified_lists_match_keys_in_any_spelling(tmp_path):
    root = make_food101n(tmp_path / "food", verified_train=[("./apple_pie/a0.jpg", 1), ("baklava//b0.jpg", 0)],
                         verified_val=[("ramen/./r1.jpg", 0)])
    table = read_food101n(root)
    assert table.keys.tolist() == FOOD_KEYS and table.skipped == {}
    assert table.verification[FOOD_KEYS.index("apple_pie/a0.jpg")] == 1
    assert table.verification[FOOD_KEYS.index("baklava/b0.jpg")] == 0
    assert table.split[FOOD_KEYS.index("ramen/r1.jpg")] == SPLIT_VAL
    extra = str(tmp_path / "extra.tsv")
    write_lines(extra, ["key\tverified", "./ramen/r2.jpg\t1"])
    assert apply_extra_verified(table, extra).verification[FOOD_KEYS.index("ramen/r2.jpg")] == 1
    # The image list itself: one image listed as ramen/r0.jpg and ./ramen/r0.jpg is a duplicate.
    write_lines(os.path.join(root, "meta", "imagelist.tsv"), ["class_name/key", *FOOD_KEYS, "./ramen/r0.jpg"])
    with pytest.raises(DatasetError, match=r"imagelist\.tsv, line 11: duplicate key 'ramen/r0\.jpg' \(also on line "
                                           r"8\)"):
        read_food101n(root)


@pytest.mark.parametrize("key, expected", [
    ("a/x.jpg", "a/x.jpg"), ("./a/x.jpg", "a/x.jpg"), ("a//x.jpg", "a/x.jpg"), ("a/b/../x.jpg", "a/x.jpg"),
    ("a/./x.jpg", "a/x.jpg"), ("a/.hidden.jpg", "a/.hidden.jpg"), ("..x.jpg", "..x.jpg"), ("a/x.jpg/", "a/x.jpg"),
])
def test_normalize_key(key, expected):
    assert normalize_key(key, "f.tsv, line 2", "/data") == expected


@pytest.mark.parametrize("key, pattern", [
    ("../x.jpg", r"f\.tsv, line 2: key '\.\./x\.jpg' leaves the dataset root /data"),
    ("a/../../x.jpg", r"leaves the dataset root"),
    ("/etc/x.jpg", r"leaves the dataset root"),
    ("a/..", r"f\.tsv, line 2: key 'a/\.\.' names the dataset root /data itself"),
    ("", r"f\.tsv, line 2: empty key"),
])
def test_normalize_key_refuses(key, pattern):
    with pytest.raises(DatasetError, match=pattern):
        normalize_key(key, "f.tsv, line 2", "/data")
