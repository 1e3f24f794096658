"""data/layout.py (data.format=auto) and load_table with the new formats, the configs and the demo data.

Each test writes its dataset (small real images, PIL) under tmp_path.
"""

from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np
import pytest
from conftest import FOOD_KEYS, make_food101n, write_lines
from test_data_folder import make_folder

from cleannet_tf import config as config_lib
from cleannet_tf.data.layout import detect_format
from cleannet_tf.data.reading import DatasetError
from cleannet_tf.data.table import SPLIT_TEST
from cleannet_tf.pipeline.table import load_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_clothing1m(root, subdir: str = "") -> str:
    """A tiny Clothing1M release: 2 classes, 3 noisy training images (2 with a clean label), 1 test image."""
    root, annotations = str(root), os.path.join(str(root), subdir)
    write_lines(os.path.join(annotations, "category_names_eng.txt"), ["T-Shirt", "Shirt"])
    write_lines(os.path.join(annotations, "noisy_label_kv.txt"), ["images/a.jpg 0", "images/b.jpg 1",
                                                                  "images/c.jpg 1"])
    write_lines(os.path.join(annotations, "clean_label_kv.txt"), ["images/a.jpg 0", "images/b.jpg 0",
                                                                  "images/t.jpg 1"])
    write_lines(os.path.join(annotations, "noisy_train_key_list.txt"), ["images/a.jpg", "images/b.jpg",
                                                                        "images/c.jpg"])
    write_lines(os.path.join(annotations, "clean_train_key_list.txt"), ["images/a.jpg"])
    write_lines(os.path.join(annotations, "clean_val_key_list.txt"), ["images/b.jpg"])
    write_lines(os.path.join(annotations, "clean_test_key_list.txt"), ["images/t.jpg"])
    make_folder(root, ["images/a.jpg", "images/b.jpg", "images/c.jpg", "images/t.jpg"])
    return root


def make_tables(directory) -> tuple[str, str]:
    """The same two rows as a .tsv and a .csv beside their images."""
    make_folder(directory, ["img/a.jpg", "img/b.jpg"])
    tsv, csv = os.path.join(str(directory), "labels.tsv"), os.path.join(str(directory), "labels.CSV")
    write_lines(tsv, ["path\tlabel\tverified\tsplit", "img/a.jpg\tcat\t1\ttrain", "img/b.jpg\tdog\t0\tval"])
    write_lines(csv, ["path,label,verified,split", "img/a.jpg,cat,1,train", "img/b.jpg,dog,0,val"])
    return tsv, csv


def load_config(name: str, *args):
    spec = importlib.util.spec_from_file_location(f"config_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def test_detect_format_tells_every_layout_apart(tmp_path):
    food = make_food101n(tmp_path / "food")
    clothing = make_clothing1m(tmp_path / "clothing")
    clothing_annotations = make_clothing1m(tmp_path / "clothing2", subdir="annotations")
    folder = make_folder(tmp_path / "photos", ["cat/a.jpg", "dog/b.png"])
    make_folder(tmp_path / "DATA", ["train/cat/a.jpg", "test/cat/b.jpg"])
    tsv, csv = make_tables(tmp_path / "tables")
    found = {path: detect_format(path) for path in (food, clothing, clothing_annotations, folder, tsv, csv)}
    assert [data_format for data_format, _ in found.values()] == ["food101n", "clothing1m", "clothing1m", "folder",
                                                                  "tsv", "csv"]
    assert os.path.join(food, "meta", "imagelist.tsv") in found[food][1]
    assert os.path.join(clothing_annotations, "annotations", "category_names_eng.txt") in found[clothing_annotations][1]
    assert "class subfolders of images (2 in" in found[folder][1]
    data_format, text = detect_format(str(tmp_path / "DATA"))
    assert data_format == "folder" and str(tmp_path / "DATA" / "test") in text


@pytest.mark.parametrize("files, target, pattern", [
    (None, "missing", r"data\.root .*missing: no such file or folder \(data\.format=auto looks for a \.tsv or "
                      r"\.csv file .*ROOT/meta/imagelist\.tsv \(food101n\).*\(folder\)\)\."),
    ([], "d", r"data\.root .*d is an empty folder \(data\.format=auto looks for"),
    (["list.txt"], "d/list.txt", r"data\.root .*list\.txt is a file but not a \.tsv or \.csv file"),
    (["notes.txt", ".hidden/a.jpg"], "d", r"data\.root .*d: no dataset layout found \(data\.format=auto looks for "
                                          r".*\)\.$"),
    (["mine.csv", "img/sub/a.jpg"], "d", r"no dataset layout found .*; it holds mine\.csv: set data\.root to that "
                                         r"file"),
    (["mine.csv", "img/a.jpg"], "d", r"d holds both class subfolders of images and mine\.csv: set data\.root to "
                                     r".*mine\.csv \(its rows\), or data\.format=folder"),
    (["cat/deep/a.jpg"], "d", r"its subfolders \['cat'\] hold no image directly .*set data\.format=folder"),
    (["a.jpg"], "d", r"its images are directly in it: put each class's images in a subfolder"),
])
def test_detect_format_says_what_it_looked_for(tmp_path, files, target, pattern):
    if files is not None:
        (tmp_path / "d").mkdir()
        make_folder(tmp_path / "d", files)
    with pytest.raises(DatasetError, match=pattern) as error:
        detect_format(str(tmp_path / target))
    assert "\n" not in str(error.value)


def test_auto_is_the_default_and_load_table_reads_every_layout(tmp_path, caplog):
    caplog.set_level("INFO")
    config = config_lib.default_config()
    assert config.data.format == "auto"
    food = make_food101n(tmp_path / "food")
    folder = make_folder(tmp_path / "photos", ["cat/a.jpg", "cat/b.jpg", "dog/c.png"])
    tsv, csv = make_tables(tmp_path / "tables")
    clothing = make_clothing1m(tmp_path / "clothing")
    for root, expected_keys in ((food, FOOD_KEYS), (folder, ["cat/a.jpg", "cat/b.jpg", "dog/c.png"]),
                                (tsv, ["img/a.jpg", "img/b.jpg"]), (csv, ["img/a.jpg", "img/b.jpg"]),
                                (clothing, ["images/a.jpg", "images/b.jpg", "images/c.jpg", "images/t.jpg"])):
        config.data.root = root
        assert load_table(config_lib.validate(config), str(tmp_path / "work")).keys.tolist() == expected_keys
    for root, data_format in ((food, "food101n"), (folder, "folder"), (tsv, "tsv"), (csv, "csv"),
                              (clothing, "clothing1m")):
        assert f"data.format=auto: {root} is " in caplog.text
        assert f"reading it as data.format={data_format}." in caplog.text
    config.data.format, config.data.root = "csv", str(tmp_path / "tables")
    with pytest.raises(DatasetError, match=r"tables is a folder; for data\.format=csv it is the \.csv file itself"):
        load_table(config, str(tmp_path / "work"))
    config.data.format, config.data.root = "auto", str(tmp_path / "nothing")
    with pytest.raises(DatasetError, match=r"nothing: no such file or folder"):
        load_table(config, str(tmp_path / "work"))


def test_every_config_validates_and_the_demo_data_is_told_apart(tmp_path):
    configs = sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(ROOT, "configs", "*.py")))
    assert {"default", "demo", "food101n", "clothing1m", "realnoise"} <= set(configs)
    for name in configs:
        config = load_config(name)
        config.data.root = config.data.root or "/data/somewhere"
        config_lib.validate(config)
        assert config.data.format in ("auto", "food101n", "clothing1m"), name
    # The demo with format=auto generates its Food-101N layout data, and auto tells that layout apart.
    demo = load_config("demo", "digits")
    demo.data.format, demo.data.demo_images_per_class = "auto", 12
    config_lib.validate(demo)
    table = load_table(demo, str(tmp_path / "work"))
    assert table.num_classes == 10 and int(table.heldout_classes.sum()) == 5
    assert detect_format(str(tmp_path / "work" / "demo_data"))[0] == "food101n"
    # The demo's settings on a user's class folders: read as a folder.
    photos = make_folder(tmp_path / "photos", ["cat/a.jpg", "dog/b.jpg"])
    demo.data.root = photos
    assert load_table(demo, str(tmp_path / "work2")).keys.tolist() == ["cat/a.jpg", "dog/b.jpg"]


def test_a_folder_runs_until_verification_rows_are_needed(tmp_path):
    """configs/realnoise.py on class folders: read and checked up to the steps that need verified rows."""
    make_folder(tmp_path / "DATA", ["train/cat/a.jpg", "train/cat/b.jpg", "train/dog/c.jpg", "train/dog/d.jpg",
                                    "test/dog/t.jpg"])
    config = load_config("realnoise")
    config.data.format, config.data.root = "auto", str(tmp_path / "DATA")
    config_lib.validate(config)
    workdir = str(tmp_path / "work")
    table = load_table(config, workdir, steps=("extract", "refs"))
    assert table.split.tolist().count(SPLIT_TEST) == 1 and (table.verification == -1).all()
    with pytest.raises(DatasetError, match=r"No verified training rows: .* a class folder has none: cleannet-run plans "
                                           r"what to verify and cleannet-review writes the answers "
                                           r"\(WORKDIR/review/verified_train\.tsv"):
        load_table(config, workdir, steps=("extract", "refs", "train"))
    # The reviewed answers (keys as the folder names them) are merged; then validation rows are what is missing.
    write_lines(os.path.join(workdir, "review", "verified_train.tsv"), ["key\tverified", "cat/a.jpg\t1",
                                                                          "dog/d.jpg\t0"])
    table = load_table(config, workdir, steps=("extract", "refs", "train"))
    np.testing.assert_array_equal(table.verification, [1, -1, -1, 0, -1])
    with pytest.raises(DatasetError, match=r"No verified validation rows: .* cleannet-review writes the answers "
                                           r"\(WORKDIR/review/verified_val\.tsv\)"):
        load_table(config, workdir, steps=("extract", "refs", "train", "verify"))


def test_a_workdir_made_with_the_layouts_name_is_complete_under_auto(tmp_path):
    """A step recorded with data.format=food101n is not redone when the config says auto and auto finds food101n."""
    from cleannet_tf.pipeline import records, runner

    root = make_food101n(tmp_path / "food")
    features = str(tmp_path / "features.npz")
    rng = np.random.default_rng(0)
    np.savez(features, keys=np.array(FOOD_KEYS), features=rng.standard_normal((len(FOOD_KEYS), 4)))
    config = config_lib.default_config()
    config.data.format, config.data.root, config.data.features = "food101n", root, features
    config.refs.num_references, config.refs.n_init = 2, 1
    workdir = str(tmp_path / "work")
    runner.run_step("refs", config, workdir)
    assert records.step_complete("refs", config, workdir)
    config.data.format = "auto"
    assert records.staleness("refs", config, workdir) is None
    config.data.format = "folder"  # another layout's reading of the same folder: the step is redone
    assert records.staleness("refs", config, workdir).startswith("config changed: data.format 'food101n' -> 'folder'")


def test_the_readers_import_no_private_name():
    """data/*.py and pipeline/table.py share data/reading.py's public helpers, not each other's private names."""
    import ast

    modules = [*glob.glob(os.path.join(ROOT, "cleannet_tf", "data", "*.py")),
               os.path.join(ROOT, "cleannet_tf", "pipeline", "table.py")]
    private = []
    for path in modules:
        with open(path) as f:
            tree = ast.parse(f.read())
        private += [f"{os.path.relpath(path, ROOT)}:{node.lineno} {alias.name}" for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cleannet_tf")
                    for alias in node.names if alias.name.startswith("_")]
    assert len(modules) > 8 and not private, private
