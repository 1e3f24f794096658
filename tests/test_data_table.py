"""Held-out class lists (cleannet_tf/data/table.py): reading them and applying them to a table."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FOOD_CLASSES, make_food101n, write_lines

from cleannet_tf.data import table as data_table
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.data.table import DatasetError


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
