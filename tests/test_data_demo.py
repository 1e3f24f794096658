"""The embedded demo dataset on disk (cleannet_tf/data/demo.py): verification lists, held-out lists, reuse and
refusal, atomic writes under failure, kill and concurrency, and reading it back with read_food101n."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from demo_data_helpers import SMALL, _generate, _lines, _pool_rows, _tree_digest, _truth_rows, _verified

from cleannet_tf.data import demo as demo_data_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.data.demo_render import heldout_classes
from cleannet_tf.data.food101n import read_food101n


@pytest.mark.parametrize("kind", ["digits", "two_digits"])
def test_verification_counts_labels_and_disjointness(tmp_path, kind):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind] * 2, verified_fraction_train=0.2,
                     verified_fraction_val=0.1, test_images_per_class=1)
    rows = _pool_rows(info.root)
    by_key = {r["key"]: r for r in rows}
    train, val = _verified(info.root, "verified_train.tsv"), _verified(info.root, "verified_val.tsv")
    assert len(train) == info.verified_train and len(val) == info.verified_val
    assert not set(train) & set(val)
    assert set(train) | set(val) <= set(by_key)
    for verified in (train, val):
        for key, label in verified.items():
            assert label == str(int(by_key[key]["true_class"] == by_key[key]["noisy_class"]))
    folder_sizes = {name: 0 for name in info.class_names}
    for r in rows:
        folder_sizes[r["noisy_class"]] += 1
    for verified, fraction in ((train, 0.2), (val, 0.1)):
        per_class = {name: 0 for name in info.class_names}
        for key in verified:
            per_class[key.split("/")[0]] += 1
        assert per_class == {name: int(round(fraction * size)) for name, size in folder_sizes.items()}
    # Both kinds of verification label occur (the noisy labels are sometimes wrong).
    assert set(train.values()) == {"0", "1"}


def test_read_demo_truth(tmp_path):
    info = _generate(tmp_path / "d", test_images_per_class=2)
    truth = demo_data_lib.read_demo_truth(info.root)
    keys = _lines(info.root, "imagelist.tsv")[1:] + [f"test/{k}" for k in _lines(info.root, "test.txt")]
    assert sorted(truth) == sorted(keys)
    for r in _truth_rows(info.root):
        assert info.class_names[truth[r["key"]]] == r["true_class"]
    for key in _lines(info.root, "test.txt"):  # test images sit in their true class folder
        assert info.class_names[truth[f"test/{key}"]] == key.split("/")[0]


def _parse_heldout(root, name):
    header, *lines = _lines(root, name)
    assert header == "class_name\tkeep"
    pairs = [line.split("\t") for line in lines]
    assert all(keep in ("0", "1") for _, keep in pairs)
    return [name for name, _ in pairs], {name for name, keep in pairs if keep == "0"}


@pytest.mark.parametrize("kind, heldout, expected", [("digits", 0, (5,)), ("digits", 3, (3, 5)),
                                                     ("two_digits", 0, (10, 50)), ("two_digits", 77, (10, 50, 77))])
def test_heldout_lists(tmp_path, kind, heldout, expected):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=2, test_images_per_class=0, heldout=heldout)
    assert info.heldout_lists == tuple(f"classes_heldout_{n}.txt" for n in expected)
    held_sets = []
    for count in expected:
        listed, held = _parse_heldout(info.root, f"classes_heldout_{count}.txt")
        assert listed == list(info.class_names)  # every class exactly once
        assert len(held) == count
        held_sets.append(held)
        mask = heldout_classes(len(info.class_names), count, 0)
        assert held == {info.class_names[i] for i in np.flatnonzero(mask)}
    assert all(a < b for a, b in zip(held_sets, held_sets[1:], strict=False))  # nested
    for count in expected:  # and the package's reader reads them back
        mask = data_table.read_heldout_list(os.path.join(info.root, "meta", f"classes_heldout_{count}.txt"),
                                          info.class_names)
        assert mask.shape == (len(info.class_names),) and int(mask.sum()) == count


def test_asking_for_another_heldout_list_adds_it_without_regenerating(tmp_path):
    info = _generate(tmp_path / "d", images_per_class=5)
    before = _tree_digest(info.root)
    more = _generate(tmp_path / "d", images_per_class=5, heldout=2)
    assert more.heldout_lists == ("classes_heldout_2.txt", "classes_heldout_5.txt")
    after = _tree_digest(info.root)
    assert set(after) - set(before) == {os.path.join("meta", "classes_heldout_2.txt")}
    assert {k: v for k, v in after.items() if k != os.path.join("meta", "demo_info.json") and k in before} == {
        k: v for k, v in before.items() if k != os.path.join("meta", "demo_info.json")}
    assert _generate(tmp_path / "d", images_per_class=5, heldout=2) == more
    assert _generate(tmp_path / "d", images_per_class=5).heldout_lists == more.heldout_lists
    assert not [p for p in os.listdir(tmp_path / "d" / "meta") if ".tmp-" in p]


def test_reuse_and_refusal(tmp_path):
    root = tmp_path / "demo"
    info = _generate(root)
    assert info.root == str(root)
    stamp = os.stat(os.path.join(info.root, "meta", "imagelist.tsv")).st_mtime_ns
    assert _generate(root) == info  # same parameters: reused, not regenerated
    assert os.stat(os.path.join(info.root, "meta", "imagelist.tsv")).st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other parameters") as error:
        _generate(root, noise_rate=0.1)
    assert str(root) in str(error.value)
    # A moved dataset is still recognised, and reports where it is now.
    moved = tmp_path / "moved"
    os.rename(root, moved)
    assert _generate(moved).root == str(moved)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something.txt").write_text("x")
    with pytest.raises(ValueError, match="not a demo dataset") as error:
        _generate(busy)
    assert str(busy) in str(error.value)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a demo dataset"):
        _generate(tmp_path / "file")
    broken = tmp_path / "broken"
    shutil.copytree(moved, broken)
    (broken / "meta" / "demo_info.json").write_text("{not json")
    with pytest.raises(ValueError, match="demo_info.json"):
        _generate(broken)
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    assert _generate(tmp_path / "empty").num_images == 400


@pytest.mark.parametrize("bad", [{"kind": "letters"}, {"noise_rate": 1.5}, {"noise_rate": -0.1},
                                 {"lookalike_share": 2.0}, {"images_per_class": 0}, {"heldout": 10},
                                 {"heldout": -1}, {"verified_fraction_train": 0.7, "verified_fraction_val": 0.5},
                                 {"test_images_per_class": -1}])
def test_bad_arguments(tmp_path, bad):
    with pytest.raises(ValueError):
        _generate(tmp_path / "d", **bad)
    assert not os.path.exists(tmp_path / "d")


def test_leftover_temporary_folder_is_not_a_dataset(tmp_path):
    root = tmp_path / "demo"
    stale = tmp_path / "demo.tmp-999999"  # what a killed run leaves
    (stale / "meta").mkdir(parents=True)
    (stale / "meta" / "classes.txt").write_text("class_name\ndigit_0\n")
    assert not os.path.exists(root)
    info = _generate(root)
    assert info.num_images == 400 and len(_lines(info.root, "imagelist.tsv")) == 401


def test_failure_midway_leaves_nothing_at_root(tmp_path, monkeypatch):
    calls = []
    real_save = demo_data_lib._save_jpeg

    def failing_save(pixels, path):
        calls.append(path)
        if len(calls) == 50:
            raise OSError("disk full")
        real_save(pixels, path)

    monkeypatch.setattr(demo_data_lib, "_save_jpeg", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _generate(tmp_path / "demo")
    assert os.listdir(tmp_path) == []  # neither the root nor the temporary folder
    monkeypatch.setattr(demo_data_lib, "_save_jpeg", real_save)
    assert _generate(tmp_path / "demo").num_images == 400


@pytest.mark.slow
def test_sigkill_midway_leaves_nothing_at_root(tmp_path):
    root, marker = tmp_path / "demo", tmp_path / "started"
    # The module is loaded on its own (it imports nothing from the package), so the child does not pay for the
    # package's TensorFlow import before it starts writing.
    script = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("demo_data", {demo_data_lib.__file__!r})
demo_data = sys.modules["demo_data"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_data)
real_save = demo_data._save_jpeg
def slow_save(pixels, path):
    real_save(pixels, path)
    open({str(marker)!r}, "w").close()
    time.sleep(0.05)
demo_data._save_jpeg = slow_save
demo_data.generate_demo_dataset({str(root)!r}, images_per_class=40, test_images_per_class=5)
"""
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "the generator did not start"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not root.exists()
    assert os.path.isdir(f"{root}.tmp-{process.pid}")  # the half dataset is under the temporary name
    info = _generate(root)  # and does not stop a new run
    assert len(_lines(info.root, "imagelist.tsv")) == 401


def test_concurrent_generation_of_the_same_dataset(tmp_path, monkeypatch):
    """Another process finishing the same dataset first: its copy is used, ours discarded."""
    root = tmp_path / "demo"
    real_write = demo_data_lib._write_dataset

    def write_then_lose_the_race(out, *args):
        info = real_write(out, *args)
        shutil.copytree(out, root)  # the other process renames its identical copy into place first
        return info

    monkeypatch.setattr(demo_data_lib, "_write_dataset", write_then_lose_the_race)
    info = _generate(root)
    assert info.root == str(root) and info.num_images == 400
    assert sorted(os.listdir(tmp_path)) == ["demo"]

    def write_then_lose_to_another_dataset(out, *args):
        info = real_write(out, *args)
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "x.txt").write_text("x")
        return info

    monkeypatch.setattr(demo_data_lib, "_write_dataset", write_then_lose_to_another_dataset)
    with pytest.raises(ValueError, match="not a demo dataset"):
        _generate(tmp_path / "other")
    assert sorted(os.listdir(tmp_path)) == ["demo", "other"]


@pytest.mark.parametrize("kind", ["digits", "two_digits"])
def test_read_back_with_read_food101n(tmp_path, kind):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], test_images_per_class=2)
    table = read_food101n(info.root)
    assert table.class_names == info.class_names
    assert len(table) == info.num_images + info.num_test_images
    split = np.asarray(table.split)
    verified = np.asarray(table.verification) >= 0
    assert int((split == data_table.SPLIT_TEST).sum()) == info.num_test_images
    assert int((verified & (split == data_table.SPLIT_TRAIN)).sum()) == info.verified_train
    assert int((verified & (split == data_table.SPLIT_VAL)).sum()) == info.verified_val
    assert int((split == data_table.SPLIT_VAL).sum()) == info.verified_val  # val = the verified_val rows
    assert not verified[split == data_table.SPLIT_TEST].any()
    truth = demo_data_lib.read_demo_truth(info.root)
    true = np.array([truth[key] for key in table.keys])
    pool = split != data_table.SPLIT_TEST
    assert int((true[pool] != table.labels[pool]).sum()) == info.num_noisy
    np.testing.assert_array_equal(true[~pool], table.labels[~pool])  # test labels are clean
    np.testing.assert_array_equal(table.verification[verified], (true == table.labels)[verified])
    assert all(os.path.isfile(p) for p in table.paths)
    heldout_name = info.heldout_lists[0]
    count = int(heldout_name[len("classes_heldout_"):-len(".txt")])
    held = read_food101n(info.root, heldout_list=os.path.join(info.root, "meta", heldout_name))
    assert int(held.heldout_classes.sum()) == count
    assert not ((held.verification >= 0) & (held.split == data_table.SPLIT_TRAIN)
                & held.heldout_classes[held.labels]).any()
