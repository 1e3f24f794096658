"""Precomputed features (cleannet_tf/data/features_npz.py): aligned to a table's keys, memory-mapped, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from error_helpers import _tsv

from cleannet_tf.data import table as data_table
from cleannet_tf.data.features_npz import load_precomputed_features
from cleannet_tf.data.table import DatasetError
from cleannet_tf.data.tsv import read_tsv


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
