"""Tests for cleannet_tf.references: per-class k-means++ reference sets."""

from __future__ import annotations

import numpy as np
import pytest
from error_helpers import _truncate

from cleannet_tf.data.features_npz import CorruptFileError
from cleannet_tf.features.kmeans import (
    KMEANS_BACKENDS,
    _assign,
    _kmeans_plusplus,
    _squared_distances,
    kmeans_float32,
    kmeans_sklearn,
)
from cleannet_tf.features.references import ReferenceSets, build_reference_sets


class RecordingGather:
    """gather_features over an in-memory (N, D) array that records every call's rows."""

    def __init__(self, features: np.ndarray):
        self.features = features
        self.calls: list[np.ndarray] = []

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(rows))
        return self.features[rows]


def planted(num_classes=3, k=4, per_blob=40, dim=16, spread=0.05, seed=0):
    """Classes that are mixtures of k well-separated blobs, rows shuffled. Returns features, labels, centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(num_classes, k, dim)).astype(np.float32)
    features = centres[:, :, None, :] + rng.normal(scale=spread, size=(num_classes, k, per_blob, dim))
    labels = np.repeat(np.arange(num_classes), k * per_blob)
    order = rng.permutation(len(labels))
    return features.reshape(-1, dim)[order].astype(np.float32), labels[order], centres


def names(c):
    return tuple(f"class_{i}" for i in range(c))


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_recovers_planted_clusters(backend):
    features, labels, centres = planted()
    refs = build_reference_sets(RecordingGather(features), labels, np.ones(len(labels), bool), names(3),
                                num_references=4, n_init=10, progress=False, kmeans_backend=backend)
    assert refs.metadata["kmeans_backend"] == backend
    assert refs.references.shape == (3, 4, 16) and refs.references.dtype == np.float32
    np.testing.assert_array_equal(refs.counts, [4, 4, 4])
    assert refs.counts.dtype == np.int32 and refs.num_images.dtype == np.int64
    np.testing.assert_array_equal(refs.num_images, [160, 160, 160])
    for c in range(3):
        distance = np.linalg.norm(centres[c][:, None, :] - refs.references[c][None, :, :], axis=-1)  # planted x found
        assert distance.min(axis=1).max() < 0.1, distance.min(axis=1)
        # One found centre per planted blob.
        assert sorted(distance.argmin(axis=1)) == [0, 1, 2, 3]


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(1)
    features = rng.random((300, 8), dtype=np.float32)  # no cluster structure: the result depends on the seed
    labels = rng.integers(0, 2, size=300)
    valid = np.ones(300, bool)
    kwargs = dict(num_references=5, n_init=1, max_samples_per_class=100, progress=False)
    a = build_reference_sets(RecordingGather(features), labels, valid, names(2), seed=3, **kwargs)
    b = build_reference_sets(RecordingGather(features), labels, valid, names(2), seed=3, **kwargs)
    np.testing.assert_array_equal(a.references, b.references)
    np.testing.assert_array_equal(a.counts, b.counts)
    gather_c = RecordingGather(features)
    gather_d = RecordingGather(features)
    c = build_reference_sets(gather_c, labels, valid, names(2), seed=4, **kwargs)
    build_reference_sets(gather_d, labels, valid, names(2), seed=3, **kwargs)
    assert not np.array_equal(a.references, c.references)
    assert not np.array_equal(gather_c.calls[0], gather_d.calls[0])  # another sample


def test_gathers_each_class_once_with_its_sorted_rows():
    features, labels, _ = planted(num_classes=3, k=2, per_blob=10, dim=4)
    valid = np.ones(len(labels), bool)
    valid[::7] = False
    gather = RecordingGather(features)
    build_reference_sets(gather, labels, valid, names(3), num_references=2, n_init=1, progress=False)
    assert len(gather.calls) == 3
    for c, rows in enumerate(gather.calls):
        assert rows.dtype == np.int64
        assert np.all(np.diff(rows) > 0)
        np.testing.assert_array_equal(rows, np.flatnonzero(valid & (labels == c)))


def test_samples_at_most_max_samples_per_class():
    features, labels, _ = planted(num_classes=3, k=2, per_blob=50, dim=4)  # 100 rows per class
    labels = labels.copy()
    labels[np.flatnonzero(labels == 2)[20:]] = 1  # class 2 keeps 20 rows, class 1 has 180
    valid = np.ones(len(labels), bool)
    gather = RecordingGather(features)
    refs = build_reference_sets(gather, labels, valid, names(3), num_references=2, n_init=1,
                                max_samples_per_class=30, progress=False)
    assert [len(rows) for rows in gather.calls] == [30, 30, 20]
    for c, rows in enumerate(gather.calls):
        assert np.all(np.diff(rows) > 0)
        assert np.all(labels[rows] == c)
    np.testing.assert_array_equal(refs.num_images, [30, 30, 20])
    # No cap.
    gather = RecordingGather(features)
    build_reference_sets(gather, labels, valid, names(3), num_references=2, n_init=1, max_samples_per_class=0,
                         progress=False)
    assert [len(rows) for rows in gather.calls] == [100, 180, 20]


def test_classes_with_fewer_than_k_distinct_vectors():
    dim, k = 6, 8
    rng = np.random.default_rng(2)
    small = rng.random((5, dim), dtype=np.float32)
    small[3] = small[1]  # 5 rows, 4 distinct
    few_distinct = np.repeat(rng.random((3, dim), dtype=np.float32), 10, axis=0)  # 30 rows >= K, 3 distinct
    big = rng.random((40, dim), dtype=np.float32)
    features = np.concatenate([small, few_distinct, big])
    labels = np.repeat([0, 1, 2], [5, 30, 40])
    refs = build_reference_sets(RecordingGather(features), labels, np.ones(len(labels), bool), names(3),
                                num_references=k, n_init=2, progress=False)
    np.testing.assert_array_equal(refs.counts, [4, 3, 8])
    np.testing.assert_array_equal(refs.num_images, [5, 30, 40])
    # Distinct vectors in row order, then cycled.
    np.testing.assert_array_equal(refs.references[0, :4], small[[0, 1, 2, 4]])
    np.testing.assert_array_equal(refs.references[1, :3], few_distinct[[0, 10, 20]])
    for c, m in ((0, 4), (1, 3)):
        for j in range(k):
            np.testing.assert_array_equal(refs.references[c, j], refs.references[c, j % m])
    assert len(np.unique(refs.references[2], axis=0)) == k


def test_does_not_modify_caller_array_when_gather_returns_views():
    features, labels, _ = planted(num_classes=2, k=2, per_blob=20, dim=4)
    order = np.argsort(labels, kind="stable")
    features, labels = features[order], labels[order]
    before = features.copy()

    def gather(rows):
        return features[rows[0]:rows[-1] + 1]  # contiguous rows: a view of the caller's array

    build_reference_sets(gather, labels, np.ones(len(labels), bool), names(2), num_references=2, n_init=1,
                         progress=False)
    np.testing.assert_array_equal(features, before)


def test_empty_class_raises_with_name_and_invalid_count():
    features, labels, _ = planted(num_classes=3, k=2, per_blob=5, dim=4)
    valid = labels != 1
    with pytest.raises(ValueError, match=r"Class 1 \('class_1'\).*10 of its rows are invalid"):
        build_reference_sets(RecordingGather(features), labels, valid, names(3), num_references=2, progress=False)
    # A class with no row at all.
    with pytest.raises(ValueError, match=r"Class 3 \('class_3'\).*0 of its rows"):
        build_reference_sets(RecordingGather(features), labels, np.ones(len(labels), bool), names(4),
                             num_references=2, progress=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_features_raise_with_class(bad):
    features, labels, _ = planted(num_classes=2, k=2, per_blob=5, dim=4)
    row = int(np.flatnonzero(labels == 1)[3])
    features[row, 2] = bad
    message = rf"Class 1 \('class_1'\) has NaN/Inf features in 1 of 10 rows, e.g. row {row}\b"
    with pytest.raises(ValueError, match=message):
        build_reference_sets(RecordingGather(features), labels, np.ones(len(labels), bool), names(2),
                             num_references=2, progress=False)


def test_argument_errors():
    features = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="outside"):
        build_reference_sets(RecordingGather(features), np.array([0, 1, 2, 5]), np.ones(4, bool), names(3),
                             progress=False)
    with pytest.raises(ValueError, match="shape"):
        build_reference_sets(lambda rows: np.zeros((1, 2), np.float32), np.array([0, 0, 1, 1]), np.ones(4, bool),
                             names(2), progress=False)


def test_save_load_round_trip(tmp_path):
    features, labels, _ = planted(num_classes=2, k=3, per_blob=10, dim=5)
    refs = build_reference_sets(RecordingGather(features), labels, np.ones(len(labels), bool), ("apple", "pie"),
                                num_references=3, n_init=2, seed=7, progress=False)
    path = str(tmp_path / "sub" / "references.npz")
    refs.save(path)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["references.npz"]  # no temp file left
    loaded = ReferenceSets.load(path)
    np.testing.assert_array_equal(loaded.references, refs.references)
    np.testing.assert_array_equal(loaded.counts, refs.counts)
    np.testing.assert_array_equal(loaded.num_images, refs.num_images)
    assert loaded.class_names == ("apple", "pie")
    assert loaded.references.dtype == np.float32 and loaded.counts.dtype == np.int32
    assert loaded.num_images.dtype == np.int64
    assert loaded.metadata["seed"] == 7 and loaded.metadata["K"] == 3 and loaded.metadata["n_init"] == 2
    assert loaded.metadata["max_iter"] == 50 and loaded.metadata["tol"] == 1e-4


def test_load_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        ReferenceSets.load(missing)
    partial = str(tmp_path / "partial.npz")
    np.savez(partial, references=np.zeros((1, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"partial\.npz.*counts"):
        ReferenceSets.load(partial)


def test_core_rows_leave_out_far_off_noisy_groups():
    from cleannet_tf.features.references import core_rows

    rng = np.random.default_rng(0)
    clean = np.maximum(rng.normal(5.0, 1.0, (70, 16)), 0)
    noisy = np.maximum(rng.normal(0.0, 1.0, (30, 16)), 0)
    noisy[:, :8] += 12.0  # three far-off groups would each get a k-means centre
    x = np.concatenate([clean, noisy]).astype(np.float32)
    core = core_rows(x, 0.7)
    assert len(core) == 70 and (core < 70).all()


def test_core_fraction_puts_every_centre_in_the_clean_majority():
    rng = np.random.default_rng(1)
    clean = np.zeros((80, 16))
    clean[:, :4] = rng.normal(10.0, 0.5, (80, 4))
    groups = []
    for g in range(4):  # far-off groups of noisy images, each in other dimensions (other classes)
        group = np.zeros((5, 16))
        group[:, 4 + 3 * g:7 + 3 * g] = rng.normal(30.0, 0.5, (5, 3))
        groups.append(group)
    x = np.maximum(np.concatenate([clean, *groups]), 0).astype(np.float32)
    labels, valid = np.zeros(len(x), np.int64), np.ones(len(x), bool)

    def build(fraction):
        return build_reference_sets(lambda rows: x[rows].copy(), labels, valid, ["a"], num_references=6,
                                    n_init=2, core_fraction=fraction, progress=False)

    paper, robust = build(1.0), build(0.8)
    near_clean = lambda refs: int((refs.references[0][:, 4:].max(axis=1) < 1.0).sum())  # noqa: E731
    assert near_clean(paper) <= 2  # each far-off group took a centre
    assert near_clean(robust) == 6 and robust.num_images[0] == 80
    with pytest.raises(ValueError, match="core_fraction"):
        build(0.0)


def exact_inertia(x: np.ndarray, centres: np.ndarray) -> float:
    """Sum of squared distances to the nearest centre, in float64 by differences (no expansion)."""
    x, centres = x.astype(np.float64), centres.astype(np.float64)
    return float(((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2).min(axis=1).sum())


@pytest.mark.parametrize("n, dim, k, spread, seed", [(400, 8, 5, 1.5, 0), (600, 16, 8, 2.5, 1), (900, 32, 10, 4.0, 2),
                                                     (500, 64, 6, 6.0, 3), (800, 4, 12, 1.0, 4)])
def test_float32_inertia_at_most_sklearns_on_blobs(n, dim, k, spread, seed):
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=n, n_features=dim, centers=k, cluster_std=spread, random_state=seed)
    x = x.astype(np.float32)
    ours, reported = kmeans_float32(x.copy(), k, seed=seed)
    theirs, _ = kmeans_sklearn(x.copy(), k, seed=seed)
    assert ours.dtype == np.float32 and ours.shape == (k, dim)
    assert exact_inertia(x, ours) <= 1.001 * exact_inertia(x, theirs)
    assert reported == pytest.approx(exact_inertia(x, ours), rel=1e-4)  # float32 expansion on centred data


def test_float32_kmeans_is_deterministic_and_leaves_input_unchanged():
    rng = np.random.default_rng(5)
    x = rng.random((500, 24), dtype=np.float32)  # no cluster structure: the result depends on the seed
    before = x.copy()
    a, inertia_a = kmeans_float32(x, 7, n_init=3, seed=11)
    np.testing.assert_allclose(x, before, atol=1e-6)  # centred in place, then restored
    b, inertia_b = kmeans_float32(before.copy(), 7, n_init=3, seed=11)
    np.testing.assert_array_equal(a, b)
    assert inertia_a == inertia_b
    c, _ = kmeans_float32(before.copy(), 7, n_init=3, seed=12)
    assert not np.array_equal(a, c)


def test_float32_kmeans_with_duplicate_points_finds_each_distinct_vector():
    rng = np.random.default_rng(6)
    distinct = rng.normal(size=(8, 10)).astype(np.float32) * 5
    x = np.repeat(distinct, [1, 2, 3, 5, 8, 13, 21, 34], axis=0)[rng.permutation(87)]  # exactly K distinct rows
    centres, inertia = kmeans_float32(x.copy(), 8, seed=0)
    distance = np.linalg.norm(distinct[:, None, :] - centres[None, :, :], axis=-1)
    assert sorted(distance.argmin(axis=1)) == list(range(8)) and distance.min(axis=1).max() < 1e-4
    assert inertia < 1e-3


def test_float32_kmeans_refuses_too_few_rows_and_other_dtypes():
    with pytest.raises(ValueError, match="k=4"):
        kmeans_float32(np.zeros((3, 2), np.float32), 4)
    with pytest.raises(ValueError, match="float64"):
        kmeans_float32(np.zeros((10, 2)), 4)


def test_float32_throughout():
    rng = np.random.default_rng(7)
    x = rng.random((60, 5), dtype=np.float32)
    x_sq = np.einsum("ij,ij->i", x, x)
    distances = _squared_distances(x[:4], x, x_sq)
    assert distances.dtype == np.float32 and distances.shape == (4, 60) and distances.min() >= 0
    np.testing.assert_allclose(distances, ((x[:4, None] - x[None]) ** 2).sum(-1), atol=1e-5)
    centres = _kmeans_plusplus(x, x_sq, 6, 3, np.random.default_rng(0), trials=4)
    assert centres.dtype == np.float32 and centres.shape == (3, 6, 5)
    labels, nearest = _assign(x, x_sq, centres)
    assert labels.shape == (3, 60) and nearest.dtype == np.float32
    np.testing.assert_allclose(nearest, ((x[None, :, None] - centres[:, None]) ** 2).sum(-1).min(-1), atol=1e-5)


@pytest.mark.parametrize("backend", KMEANS_BACKENDS)
def test_both_backends_handle_small_and_identical_classes(backend):
    rng = np.random.default_rng(8)
    features = np.concatenate([rng.random((3, 4), dtype=np.float32),  # class 0: fewer rows than K
                               np.ones((20, 4), np.float32),  # class 1: all rows identical
                               rng.random((30, 4), dtype=np.float32)])
    labels = np.repeat([0, 1, 2], [3, 20, 30])
    refs = build_reference_sets(RecordingGather(features), labels, np.ones(53, bool), names(3), num_references=5,
                                n_init=2, progress=False, kmeans_backend=backend)
    np.testing.assert_array_equal(refs.counts, [3, 1, 5])
    np.testing.assert_array_equal(refs.references[1], np.ones((5, 4), np.float32))
    assert refs.references.dtype == np.float32


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="kmeans_backend"):
        build_reference_sets(RecordingGather(np.zeros((2, 2), np.float32)), np.array([0, 0]), np.ones(2, bool),
                             names(1), progress=False, kmeans_backend="faiss")


def test_truncated_references_npz_is_named(tmp_path):
    path = str(tmp_path / "references.npz")
    ReferenceSets(references=np.ones((2, 3, 4), np.float32), counts=np.array([5, 6]), class_names=("a", "b"),
                  num_images=np.array([5, 6])).save(path)
    assert ReferenceSets.load(path).references.shape == (2, 3, 4)
    _truncate(path)
    with pytest.raises(CorruptFileError, match=rf"^{path} is not a valid \.npz \(truncated or corrupt\): .*"
                                               "rerun cleannet-refs"):
        ReferenceSets.load(path)
