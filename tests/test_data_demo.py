"""The embedded demo dataset: known noise, verification, source split, held-out lists, determinism, atomic writes."""

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from cleannet_tf.data import demo as demo_data_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.data.demo_render import LOOKALIKE, _load_digits, heldout_classes, split_source_digits
from cleannet_tf.data.food101n import read_food101n

SMALL = {"digits": 40, "two_digits": 3}  # images per class in most tests: fast


def _generate(root, **kwargs):
    settings = {"kind": "digits", "images_per_class": 40, "test_images_per_class": 5, **kwargs}
    return demo_data_lib.generate_demo_dataset(str(root), **settings)


def _lines(root, name):
    with open(os.path.join(root, "meta", name), encoding="utf-8") as f:
        return f.read().splitlines()


def _truth_rows(root):
    header, *lines = _lines(root, "truth.tsv")
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


def _pool_rows(root):
    return [r for r in _truth_rows(root) if not r["key"].startswith("test/")]


def _verified(root, name):
    header, *lines = _lines(root, name)
    assert header == "class_name/key\tverification_label"
    return dict(line.split("\t") for line in lines)


def _digits(class_name):
    return [int(d) for d in class_name.split("_")[1]]


def _tree_digest(root):
    """relative path -> sha256 of every file under root."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests


# --------------------------------------------------------------------------- noise


@pytest.mark.parametrize("kind, noise_rate, share", [("digits", 0.3, 0.5), ("two_digits", 0.3, 0.5),
                                                     ("digits", 0.17, 0.8), ("two_digits", 0.45, 0.25)])
def test_noise_rate_types_and_lookalike_map(tmp_path, kind, noise_rate, share):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], noise_rate=noise_rate,
                     lookalike_share=share, test_images_per_class=1)
    rows = _pool_rows(info.root)
    n = len(info.class_names) * SMALL[kind]
    assert len(rows) == info.num_images == n
    assert [r["key"] for r in rows] == _lines(info.root, "imagelist.tsv")[1:]
    noisy = [r for r in rows if r["true_class"] != r["noisy_class"]]
    assert len(noisy) == info.num_noisy == round(noise_rate * n)
    assert info.realised_noise_rate == pytest.approx(round(noise_rate * n) / n)
    assert abs(info.realised_noise_rate - noise_rate) <= 0.5 / n
    assert all(r["noise_type"] == "clean" for r in rows if r["true_class"] == r["noisy_class"])
    types = [r["noise_type"] for r in noisy]
    assert types.count("lookalike") == info.num_lookalike == round(share * len(noisy))
    assert types.count("uniform") == info.num_uniform == len(noisy) - info.num_lookalike
    for r in noisy:
        true_digits, noisy_digits = _digits(r["true_class"]), _digits(r["noisy_class"])
        if r["noise_type"] == "lookalike":  # exactly one digit changed, to its look-alike
            changed = [(t, d) for t, d in zip(true_digits, noisy_digits, strict=True) if t != d]
            assert len(changed) == 1 and LOOKALIKE[changed[0][0]] == changed[0][1]
    # Each image sits in the folder of its noisy class; every true class has images_per_class images.
    assert all(r["key"].split("/")[0] == r["noisy_class"] for r in rows)
    true_counts = {name: 0 for name in info.class_names}
    for r in rows:
        true_counts[r["true_class"]] += 1
    assert set(true_counts.values()) == {SMALL[kind]}
    with open(os.path.join(info.root, "meta", "demo_info.json")) as f:
        recorded = json.load(f)
    assert recorded["num_noisy"] == info.num_noisy and recorded["parameters"]["noise_rate"] == noise_rate
    assert recorded["parameters"]["seed"] == 0 and recorded["kind"] == kind
    assert {int(k): v for k, v in recorded["lookalike"].items()} == LOOKALIKE


def test_lookalike_map_is_a_proper_confusion_map():
    assert sorted(LOOKALIKE) == list(range(10))
    assert all(a != b for a, b in LOOKALIKE.items())
    for a, b in ((1, 7), (3, 8), (4, 9), (5, 6)):  # the classic pairs go both ways
        assert LOOKALIKE[a] == b and LOOKALIKE[b] == a


def test_two_digit_lookalike_flips_hit_both_positions(tmp_path):
    info = _generate(tmp_path / "d", kind="two_digits", images_per_class=3, test_images_per_class=1)
    positions = set()
    for r in _pool_rows(info.root):
        if r["noise_type"] == "lookalike":
            t, d = r["true_class"][-2:], r["noisy_class"][-2:]
            positions |= {i for i in range(2) if t[i] != d[i]}
    assert positions == {0, 1}


def test_zero_noise_and_full_lookalike(tmp_path):
    clean = _generate(tmp_path / "clean", noise_rate=0.0, images_per_class=10)
    assert clean.num_noisy == 0 and all(r["noise_type"] == "clean" for r in _pool_rows(clean.root))
    assert set(_verified(clean.root, "verified_train.tsv").values()) == {"1"}
    allflip = _generate(tmp_path / "look", noise_rate=1.0, lookalike_share=1.0, images_per_class=10)
    assert allflip.num_noisy == allflip.num_lookalike == 100
    assert all(LOOKALIKE[_digits(r["true_class"])[0]] == _digits(r["noisy_class"])[0]
               for r in _pool_rows(allflip.root))


# --------------------------------------------------------------------------- verification


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


# --------------------------------------------------------------------------- sources and images


@pytest.mark.parametrize("kind", ["digits", "two_digits"])
def test_test_images_use_other_source_digits(tmp_path, kind):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], test_images_per_class=3, seed=3)
    pool_sources, test_sources = split_source_digits(3)
    pool_ids = set(np.concatenate(list(pool_sources.values())).tolist())
    test_ids = set(np.concatenate(list(test_sources.values())).tolist())
    assert not pool_ids & test_ids and len(pool_ids | test_ids) == 1797
    assert len(test_ids) == pytest.approx(0.2 * 1797, abs=10)
    _, targets = _load_digits()
    used_pool, used_test = set(), set()
    for r in _truth_rows(info.root):
        sources = [int(s) for s in r["source_digits"].split(",")]
        # The drawn digits are those of the TRUE class, left digit = tens.
        assert [int(targets[s]) for s in sources] == _digits(r["true_class"])
        (used_test if r["key"].startswith("test/") else used_pool).update(sources)
    assert used_pool <= pool_ids and used_test <= test_ids and used_pool and used_test
    assert not used_pool & used_test


def test_sources_are_dealt_evenly(tmp_path):
    info = _generate(tmp_path / "d", images_per_class=160, test_images_per_class=0, noise_rate=0.0)
    counts = np.bincount([int(r["source_digits"]) for r in _pool_rows(info.root)], minlength=1797)
    pool_sources, _ = split_source_digits(0)
    for digit, ids in pool_sources.items():  # 160 images from ~144 sources: each used once or twice
        assert counts[ids].min() >= 160 // len(ids) and counts[ids].max() <= -(-160 // len(ids)), digit
    # Sources are reused, the images are not: shift and intensity jitter make every file different.
    digests = _tree_digest(os.path.join(info.root, "images"))
    assert len(digests) == 1600 and len(set(digests.values())) == 1600


@pytest.mark.parametrize("kind, size", [("digits", (32, 32)), ("two_digits", (32, 64))])
def test_every_listed_image_exists_decodes_and_is_unique(tmp_path, kind, size):
    info = _generate(tmp_path / kind, kind=kind, images_per_class=SMALL[kind], test_images_per_class=2)
    assert info.image_size == size
    paths = [os.path.join(info.root, "images", key) for key in _lines(info.root, "imagelist.tsv")[1:]]
    paths += [os.path.join(info.root, "test", f"{key}.jpg") for key in _lines(info.root, "test.txt")]
    assert len(paths) == info.num_images + info.num_test_images
    digests = set()
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        digests.add(hashlib.sha256(data).hexdigest())
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == size[::-1]
            pixels = np.asarray(image)
        assert pixels.max() > 100  # a digit, not a blank
    assert len(digests) == len(paths)  # no two images byte-identical
    # Nothing else on disk: exactly the listed images.
    on_disk = sum(len(files) for folder in ("images", "test") for _, _, files in os.walk(os.path.join(info.root,
                                                                                                      folder)))
    assert on_disk == len(paths)
    # Keys: 32 hex digits, unique.
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    assert len(set(names)) == len(names) and all(len(x) == 32 and int(x, 16) >= 0 for x in names)


def test_read_demo_truth(tmp_path):
    info = _generate(tmp_path / "d", test_images_per_class=2)
    truth = demo_data_lib.read_demo_truth(info.root)
    keys = _lines(info.root, "imagelist.tsv")[1:] + [f"test/{k}" for k in _lines(info.root, "test.txt")]
    assert sorted(truth) == sorted(keys)
    for r in _truth_rows(info.root):
        assert info.class_names[truth[r["key"]]] == r["true_class"]
    for key in _lines(info.root, "test.txt"):  # test images sit in their true class folder
        assert info.class_names[truth[f"test/{key}"]] == key.split("/")[0]


# --------------------------------------------------------------------------- held-out lists


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


def test_heldout_choice_depends_on_the_seed():
    a, b = (heldout_classes(100, 50, seed) for seed in (0, 1))
    assert a.sum() == b.sum() == 50 and (a != b).any()


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


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ["digits", "two_digits"])
def test_deterministic_for_a_seed(tmp_path, kind):
    settings = {"kind": kind, "images_per_class": {"digits": 20, "two_digits": 2}[kind], "test_images_per_class": 1}
    a, b, c = (_generate(tmp_path / name, seed=seed, **settings) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    digest_a, digest_b, digest_c = (_tree_digest(x.root) for x in (a, b, c))
    assert digest_a == digest_b  # every list and every JPEG byte-identical
    assert len(digest_a) == a.num_images + a.num_test_images + 7 + len(a.heldout_lists)  # 7 meta files
    for name in ("imagelist.tsv", "verified_train.tsv", "verified_val.tsv", "truth.tsv", "test.txt"):
        assert digest_a[os.path.join("meta", name)] != digest_c[os.path.join("meta", name)], name
    assert a == dataclasses.replace(b, root=a.root) and a != dataclasses.replace(c, root=a.root)


# --------------------------------------------------------------------------- reuse, refusal, atomic writes


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


# --------------------------------------------------------------------------- the package's reader


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
