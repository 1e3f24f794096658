"""The generic TSV reader (cleannet_tf/data/tsv.py) on tiny tables under tmp_path (8x8 JPEGs)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import make_tsv, write_jpeg
from error_helpers import _tsv, _write

from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, UNKNOWN, DatasetError
from cleannet_tf.data.tsv import read_tsv


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
