"""load_table (cleannet_tf/pipeline/table.py): the config's data section to a LabelTable, on each reader's tiny tree."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import (
    CLOTHING_EXPECTED,
    FOOD_KEYS,
    make_clothing1m,
    make_food101n,
    make_tsv,
    write_lines,
)

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.data.table import UNKNOWN, DatasetError
from cleannet_tf.pipeline.table import load_table


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
