"""load_table (cleannet_tf/pipeline/table.py): the config's data section to a LabelTable, on each reader's tiny tree."""

from __future__ import annotations

import logging
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
from error_helpers import ROOT, _config, _food101n, _tsv, _write

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


def _demo_config(root, **fields):
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_config", os.path.join(ROOT, "configs", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config("digits")
    config.data.root = str(root)
    for field, value in fields.items():
        section, name = field.split("__")
        config[section][name] = value
    return config_lib.validate(config)


def test_demo_config_on_a_users_tsv_uses_it_and_says_so(tmp_path, caplog):
    rows = [f"img{i}.jpg\tclass{i % 2}\t{i % 3 % 2 if i % 3 else ''}\t{'val' if i % 5 == 0 else 'train'}"
            for i in range(40)]
    tsv = _tsv(tmp_path / "mine", rows)
    before = sorted(os.listdir(tmp_path / "mine"))
    with caplog.at_level(logging.WARNING):
        table = load_table(_demo_config(tsv, data__check_images=False), str(tmp_path / "work"))
    assert len(table) == 40 and table.class_names == ("class0", "class1")
    assert f"data.root {tsv} is not a demo dataset: using it as a tsv dataset with the demo's settings" in caplog.text
    assert sorted(os.listdir(tmp_path / "mine")) == before  # nothing written beside the user's data


def test_demo_config_on_a_users_food101n_folder_reads_it(tmp_path, caplog):
    root = _food101n(tmp_path / "food", ["three/a.jpg", "four/b.jpg"], verified_train=[("three/a.jpg", 1)])
    with caplog.at_level(logging.WARNING):
        table = load_table(_demo_config(root, data__check_images=False), str(tmp_path / "work"))
    assert table.keys.tolist() == ["three/a.jpg", "four/b.jpg"]
    assert "using it as a food101n dataset" in caplog.text


def test_demo_config_on_an_unknown_folder_never_advises_deleting_it(tmp_path):
    (tmp_path / "photos").mkdir()
    _write(tmp_path / "photos" / "holiday.jpg", "x")
    with pytest.raises(DatasetError) as error:
        load_table(_demo_config(tmp_path / "photos"), str(tmp_path / "work"))
    message = str(error.value)
    assert "is not a demo dataset, nor a dataset in a layout this package reads" in message
    assert "new or empty folder" in message and "delete" not in message.lower()
    assert os.listdir(tmp_path / "photos") == ["holiday.jpg"]


def test_demo_with_an_explicit_format_is_valid_on_a_users_root(tmp_path):
    tsv = _tsv(tmp_path / "mine", ["a.jpg\tcat\t1\ttrain", "b.jpg\tdog\t0\tval"])
    config = _demo_config(tsv, data__format="tsv", data__check_images=False)  # rejected by validate() before
    assert len(load_table(config, str(tmp_path / "work"))) == 2
    with pytest.raises(ValueError, match="data.format: must be 'food101n' when data.demo generates"):
        _demo_config("", data__format="tsv")


def _tsv_config(tsv, **fields):
    return _config(data__format="tsv", data__root=tsv, data__check_images=False, **fields)


@pytest.mark.parametrize("rows, steps, pattern", [
    (["a.jpg\tcat\t\ttrain", "b.jpg\tdog\t1\tval"], ("train",), r"No verified training rows: CleanNet learns .* Add "
     r"some: .*labels\.tsv: rows with split=train \(or no split\) and a `verified` value"),
    (["a.jpg\tcat\t1\ttrain", "b.jpg\tdog\t\tval"], ("verify",), r"No verified validation rows: cleannet-verify "
     r"chooses its threshold on them\. Add some: .*labels\.tsv: rows with split=val and a `verified` value"),
    (["a.jpg\tcat\t1\ttrain", "b.jpg\tdog\t\ttest"], ("refs",), r"1 class\(es\) have no training or validation "
     r"image, only test rows: 'dog'"),
    (["a.jpg\tcat\t1\ttrain", "b.jpg\tdog\t1\tval", "c.jpg\tdog\t1\tval"], ("verify",),
     r"cleannet\.mode=stacked fits its score on verified validation rows of both kinds, but they are 2 labelled "
     r"right and 0 wrong"),
])
def test_missing_needs_of_later_steps_fail_at_load(tmp_path, rows, steps, pattern):
    tsv = _tsv(tmp_path / "d", rows)
    config = _tsv_config(tsv, cleannet__mode="stacked")
    load_table(config, str(tmp_path / "w"))  # without steps: reading alone is fine
    with pytest.raises(DatasetError, match=pattern):
        load_table(config, str(tmp_path / "w"), steps=steps)


def test_food101n_without_verified_validation_rows_names_its_file(tmp_path):
    root = _food101n(tmp_path / "food", ["three/a.jpg", "four/b.jpg"], verified_train=[("three/a.jpg", 1)])
    config = _config(data__root=root, data__check_images=False, model__backbone="small_cnn",
                     model__weights="random")
    load_table(config, str(tmp_path / "w"), steps=("refs", "train"))
    with pytest.raises(DatasetError, match=r"No verified validation rows: .* Add some: .*meta/verified_val\.tsv"):
        load_table(config, str(tmp_path / "w"), steps=("verify",))


def test_verified_rows_only_in_held_out_classes_say_so(tmp_path):
    tsv = _tsv(tmp_path / "d", ["a.jpg\tcat\t1\ttrain", "b.jpg\tdog\t\ttrain", "c.jpg\tcat\t1\tval"])
    heldout = _write(tmp_path / "d" / "heldout.txt", "class\tkeep\ncat\t0\ndog\t1\n")
    config = _tsv_config(tsv, data__heldout_list=heldout)
    with pytest.raises(DatasetError, match=r"No verified training rows in classes that are not held out \(1 of 2 "
                                           r"classes are, by data\.heldout_list\)"):
        load_table(config, str(tmp_path / "w"), steps=("train",))
