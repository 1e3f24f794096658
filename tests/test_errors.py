"""Errors for people: one line naming the file, line or field; data problems found at load; help that helps.

CLI cases run the commands as users do (real subprocesses on real files) and fail at validation or load,
before any training.
"""

import errno
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from cleannet_tf import config as config_lib
from cleannet_tf.data.clothing1m import read_clothing1m
from cleannet_tf.data.features_npz import CorruptFileError, load_precomputed_features
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.data.table import DatasetError
from cleannet_tf.data.tsv import read_tsv
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.features.store import FeatureStore
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.table import load_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("extract", "refs", "train", "verify", "train_classifier", "run", "demo", "export", "serve", "config",
            "review")


def _run(module, *args, env=None):
    return subprocess.run([sys.executable, "-m", f"cleannet_tf.cli.{module}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env=env)


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def _tsv(directory, rows, header="path\tlabel\tverified\tsplit"):
    return _write(os.path.join(directory, "labels.tsv"), "\n".join([header, *rows]) + "\n")


def _config(**fields):
    config = config_lib.default_config()
    for field, value in fields.items():
        section, name = field.split("__")
        config[section][name] = value
    return config_lib.validate(config)


# --------------------------------------------------------------------------- the CLI: one line, exit 1


def test_workdir_that_is_a_file_is_one_line_and_traceback_only_with_debug(tmp_path):
    workdir = _write(tmp_path / "not_a_folder", "x")
    as_a_user = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it
    result = _run("refs", f"--workdir={workdir}", "--config=configs/demo.py", env=as_a_user)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"cleannet-refs: error: --workdir {workdir} is a file, not a folder: choose a folder (it is "
                     "created if missing). (--debug shows the traceback)"], result.stderr  # nothing else: quiet
    debug = _run("refs", f"--workdir={workdir}", "--config=configs/demo.py", "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "is a file, not a folder" in debug.stderr


def test_truncated_features_npz_is_named(tmp_path):
    from conftest import write_feature_dataset

    overrides, _, _ = write_feature_dataset(tmp_path / "data", num_classes=3, per_class=20)
    _truncate(overrides["data.features"])
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    result = _run("refs", f"--workdir={tmp_path / 'work'}", *flags)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cleannet-refs: error: {overrides['data.features']} is not a valid .npz (truncated or "
                           "corrupt):"), result.stderr


def test_tsv_without_validation_rows_fails_at_load_with_the_demo_config_on_the_users_root(tmp_path):
    # The demo's config on the user's own TSV: used as a tsv dataset (and said so), then stopped at load because
    # cleannet-verify will need validation rows; no training ran, nothing advises deleting the data.
    rows = [f"img{i}.jpg\tclass{i % 3}\t{'1' if i % 4 == 0 else ''}\t" for i in range(30)]
    tsv = _tsv(tmp_path / "mine", rows)
    workdir = tmp_path / "work"
    result = _run("run", "--config=configs/demo.py", f"--config.data.root={tsv}", "--config.data.check_images=false",
                  f"--workdir={workdir}")
    assert result.returncode == 1
    assert f"data.root {tsv} is not a demo dataset: using it as a tsv dataset with the demo's settings" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"cleannet-run: error: {tsv} has no validation rows: add a `split` column with values train/val/test, or "
        "mark verified rows with split=val (cleannet-verify chooses its threshold on verified validation rows). "
        "(--debug shows the traceback)")
    assert "delete" not in result.stderr.lower()
    assert not (workdir / "classifier").exists()  # failed before the first step
    # The config goes to the workdir file, not to the log.
    assert (workdir / "config.run.json").exists()
    assert "demo_noise_rate" not in result.stderr


def test_each_command_docstring_says_what_it_does_and_run_goes_through_cli_run():
    import ast
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f"cleannet_tf.cli.{name}")
        doc = module.__doc__
        assert doc.startswith("cleannet-") and ": " in doc.splitlines()[0], name
        assert "Reads:" in doc and "Writes:" in doc, name
        assert "--debug" in doc, name
        if name != "serve":
            assert "cleannet-config --show" in doc, name
        run = next(node for node in ast.parse(open(module.__file__).read()).body
                   if isinstance(node, ast.FunctionDef) and node.name == "run")
        assert re.search(r"\b(cli_flags|flags)\.run\(main", ast.unparse(run)), name  # cli/flags.py run: --help text


@pytest.mark.parametrize("name", ["verify", "run", "config"])
def test_help_shows_the_description_and_the_flags_without_startup_noise(name):
    as_a_user = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = _run(name, "--help", env=as_a_user)
    module = __import__(f"cleannet_tf.cli.{name}", fromlist=["_"])
    assert module.__doc__.strip() in result.stdout  # the whole description
    assert "--config:" in result.stdout and "--debug:" in result.stdout.replace("--[no]debug:", "--debug:")
    assert ("--workdir:" in result.stdout) == (name != "config")
    assert result.stderr == "", result.stderr  # no TensorFlow start-up lines


def test_serve_help_lists_its_own_flags():
    result = _run("serve", "--help")
    assert "--model_config_file:" in result.stdout and "--rest_api_port:" in result.stdout
    assert "--workdir:" not in result.stdout


def test_config_show_prints_every_field_with_its_comment_and_default():
    result = _run("config", "--show", "--config=configs/demo.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout

    def flatten(config, prefix=""):
        for name, value in config.items():
            if hasattr(value, "items"):
                yield from flatten(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", value

    for field, default in flatten(config_lib.default_config()):
        assert f"\n{field} = {default!r}" in "\n" + out, field
    assert "data.root = ''\n    Dataset root (release layout), or for `tsv` the .tsv file itself." in out
    assert "data.demo = ''" in out and "(this config: 'two_digits')" in out


def test_describe_error_names_the_path_of_a_full_disk():
    from cleannet_tf.cli import flags as cli_flags

    error = OSError(errno.ENOSPC, "No space left on device", "/work/x/shard-00001.features.npy")
    assert cli_flags.describe_error(error) == ("/work/x/shard-00001.features.npy: no space left on device: free some "
                                               "space (or choose another --workdir) and rerun.")
    assert cli_flags.describe_error(FileExistsError(errno.EEXIST, "File exists", "/a")) == "/a: File exists."


# --------------------------------------------------------------------------- corrupt files name themselves


def test_truncated_references_npz_is_named(tmp_path):
    path = str(tmp_path / "references.npz")
    ReferenceSets(references=np.ones((2, 3, 4), np.float32), counts=np.array([5, 6]), class_names=("a", "b"),
                  num_images=np.array([5, 6])).save(path)
    assert ReferenceSets.load(path).references.shape == (2, 3, 4)
    _truncate(path)
    with pytest.raises(CorruptFileError, match=rf"^{path} is not a valid \.npz \(truncated or corrupt\): .*"
                                               "rerun cleannet-refs"):
        ReferenceSets.load(path)


def test_truncated_feature_shard_is_named(tmp_path):
    keys = np.array([f"k{i}" for i in range(10)])
    store = FeatureStore.create_or_open(str(tmp_path / "features"), keys=keys, paths=keys, feature_dim=4,
                                        shard_size=5, extractor={"x": 1})
    for shard in range(2):
        store.write_shard(shard, np.ones((5, 4), np.float32), np.ones(5, bool))
    assert store.load_all().shape == (10, 4)
    shard_path = str(tmp_path / "features" / "shard-00001.features.npy")
    _truncate(shard_path, keep=0.9)
    with pytest.raises(CorruptFileError, match=rf"^{shard_path}.*(truncated|corrupt).*cleannet-extract"):
        store.load_all()


def test_non_utf8_line_names_the_line(tmp_path):
    tsv = _write(tmp_path / "labels.tsv", "path\tlabel\na.jpg\tcat\n", "w")
    _write(tsv, b"b\xe9.jpg\tcat\nc.jpg\tdog\n", "ab")
    with pytest.raises(DatasetError) as error:
        read_tsv(tsv, check_images=False)
    assert str(error.value).startswith(f"{tsv}, line 3: not UTF-8 text")
    assert "position" not in str(error.value)


# --------------------------------------------------------------------------- keys stay inside the dataset root


def _food101n(root, keys, verified_train=(), verified_val=()):
    meta = os.path.join(root, "meta")
    _write(os.path.join(meta, "classes.txt"), "class_name\nthree\nfour\n")
    _write(os.path.join(meta, "imagelist.tsv"), "class_name/key\n" + "".join(f"{k}\n" for k in keys))
    for name, rows in (("train", verified_train), ("val", verified_val)):
        _write(os.path.join(meta, f"verified_{name}.tsv"),
               "class_name/key\tverification_label\n" + "".join(f"{k}\t{v}\n" for k, v in rows))
    return str(root)


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
    assert table.keys.tolist() == keys


def test_tsv_relative_path_leaving_its_folder_is_refused(tmp_path):
    tsv = _tsv(tmp_path / "data", ["a.jpg\tcat\t\t", "../../etc/hostname\tcat\t\t"])
    with pytest.raises(DatasetError, match=r"labels\.tsv, line 3: path '\.\./\.\./etc/hostname' leaves the file's "
                                           "folder"):
        read_tsv(tsv, check_images=False)


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


# --------------------------------------------------------------------------- the demo config on a user's root


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


# --------------------------------------------------------------------------- data.features: the pool only


def test_precomputed_features_need_the_noisy_pool_only(tmp_path):
    tsv = _tsv(tmp_path / "d", ["a.jpg\tcat\t1\ttrain", "b.jpg\tdog\t0\tval", "t.jpg\tcat\t\ttest"])
    table = read_tsv(tsv, check_images=False)
    npz = str(tmp_path / "f.npz")
    np.savez(npz, keys=np.array(["b.jpg", "a.jpg"]), features=np.array([[3.0, 4.0], [1.0, 2.0]]))
    features, valid = load_precomputed_features(npz, table)
    np.testing.assert_array_equal(features, [[1, 2], [3, 4], [0, 0]])
    np.testing.assert_array_equal(valid, [True, True, False])
    np.savez(npz, keys=np.array(["a.jpg", "t.jpg"]), features=np.ones((2, 2)))
    with pytest.raises(DatasetError, match=r"1 of the dataset's 2 train/val keys have no features, e\.g\. "
                                           r"\['b\.jpg'\]"):
        load_precomputed_features(npz, table)


def test_refs_run_on_features_without_the_test_split(tmp_path):
    from conftest import write_feature_dataset


    overrides, _, _ = write_feature_dataset(tmp_path / "data", num_classes=3, per_class=30)
    tsv = overrides["data.root"]
    with open(tsv, "a") as f:
        f.write("".join(f"test{i}.jpg\tclass{i % 3}\t\ttest\n" for i in range(6)))
    config = _config(**{k.replace(".", "__"): v for k, v in overrides.items()}, refs__num_references=4,
                     refs__n_init=1)
    table = load_table(config, str(tmp_path / "work"), steps=("refs",))
    reference_sets = run_refs(config, str(tmp_path / "work"), table=table, progress=False)
    assert reference_sets.references.shape[:2] == (3, 4)


# --------------------------------------------------------------------------- what later steps need, at load


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


def test_tensorflow_info_lines_are_filtered_but_ours_and_its_warnings_are_not():
    import logging

    import tensorflow as tf

    from cleannet_tf.cli import flags as cli_flags

    saver = os.path.join(os.path.dirname(tf.__file__), "python", "checkpoint", "functional_saver.py")
    record = lambda level, path: logging.LogRecord("absl", level, path, 1, "message", None, None)  # noqa: E731
    assert not cli_flags._without_tensorflow_info(record(logging.INFO, saver))  # "Sharding callback duration"
    assert cli_flags._without_tensorflow_info(record(logging.WARNING, saver))
    assert cli_flags._without_tensorflow_info(record(logging.INFO, cli_flags.__file__))
