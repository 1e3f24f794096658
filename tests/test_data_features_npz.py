"""data.features_npz: only `keys` and `features` are read, each sized before it is inflated."""

from __future__ import annotations

import io
import tracemalloc
import zipfile

import numpy as np
import pytest

from cleannet_tf.data.features_npz import CorruptFileError, load_npz, load_precomputed_features
from cleannet_tf.data.table import DatasetError
from cleannet_tf.data.tsv import read_tsv


def _table(tmp_path):
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("path\tlabel\tverified\tsplit\na.jpg\tcat\t1\ttrain\nb.jpg\tdog\t0\tval\n")
    return read_tsv(str(tsv), check_images=False)


def _npy_header(shape, dtype="<f4") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": shape})
    return header.getvalue()


def _write_npz(path, members: dict[str, bytes | np.ndarray], *, compression=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", compression=compression, compresslevel=1) as archive:
        for name, member in members.items():
            if isinstance(member, np.ndarray):
                buffer = io.BytesIO()
                np.save(buffer, member)
                member = buffer.getvalue()
            archive.writestr(name + ".npy", member)


def test_an_unused_deflated_giant_member_is_never_inflated(tmp_path):
    """A ~2.5 MB file with a 700 MB member besides keys and features: np.load used to inflate it."""
    path = tmp_path / "features.npz"
    keys, features = np.array(["b.jpg", "a.jpg"]), np.array([[3.0, 4.0], [1.0, 2.0]], np.float32)
    _write_npz(path, {"keys": keys, "features": features})
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("junk.npy", "w", force_zip64=True) as member:
            zeros = bytes(16 << 20)
            member.write(_npy_header((44 * len(zeros),), "|u1"))
            for _ in range(44):
                member.write(zeros)
    assert path.stat().st_size < 5 << 20
    tracemalloc.start()
    try:
        aligned, valid = load_precomputed_features(str(path), _table(tmp_path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(aligned, [[1, 2], [3, 4]])
    assert valid.all() and peak < 20 << 20, peak


def test_a_member_larger_than_its_zip_entry_or_the_limit_is_refused_naming_file_and_member(tmp_path):
    path = tmp_path / "features.npz"
    # the npy header claims 10^9 rows; the zip entry holds 8 bytes of data
    _write_npz(path, {"keys": np.array(["a.jpg", "b.jpg"]),
                      "features": _npy_header((1_000_000_000, 2)) + np.zeros(2, np.float32).tobytes()})
    with pytest.raises(DatasetError, match=rf"^{path}: member features\.npy declares shape \(1000000000, 2\) of "
                                           r"float32 \(8000000000 bytes\) but its zip entry holds 8 bytes"):
        load_precomputed_features(str(path), _table(tmp_path))

    _write_npz(path, {"keys": np.array(["a.jpg", "b.jpg"]), "features": np.zeros((2, 1000), np.float32)})
    with pytest.raises(CorruptFileError, match=rf"^{path}: member features\.npy inflates to 8128 bytes, over the "
                                               r"limit of 8000\."):
        load_npz(str(path), max_bytes=8000)
    assert load_npz(str(path), max_bytes=8128)["features"].shape == (2, 1000)
    assert list(load_npz(str(path), names=("keys", "absent"))) == ["keys"]


def test_keys_that_are_not_utf8_are_one_line_naming_the_file(tmp_path):
    path = tmp_path / "features.npz"
    np.savez(path, keys=np.array([b"a.jpg", b"b\xff\xfe.jpg"]), features=np.ones((2, 2), np.float32))
    with pytest.raises(DatasetError, match=rf"^{path}: 'keys' holds bytes that are not UTF-8, e\.g\. key 1 "
                                           r"b'b\\xff\\xfe\.jpg'; write the keys as str\.$"):
        load_precomputed_features(str(path), _table(tmp_path))


def test_a_stored_features_member_is_mapped_only_if_its_header_fits_its_entry(tmp_path):
    """np.savez members are memory-mapped: a header claiming more rows must not map the bytes after it."""
    path = tmp_path / "features.npz"
    keys = np.array(["a.jpg", "b.jpg"])
    _write_npz(path, {"features": _npy_header((2, 2)) + np.ones(2, np.float32).tobytes(),  # 8 of 16 bytes
                      "keys": keys, "padding": np.zeros(1000, np.float32)}, compression=zipfile.ZIP_STORED)
    with pytest.raises(DatasetError, match=rf"^{path}: member features\.npy declares shape \(2, 2\) of float32 "
                                           r"\(16 bytes\) but its zip entry holds 8 bytes"):
        load_precomputed_features(str(path), _table(tmp_path))
    np.savez(path, keys=keys, features=np.array([[1, 2], [3, 4]], np.float32))
    assert isinstance(load_npz(str(path), mmap=("features",))["features"], np.memmap)
    np.testing.assert_array_equal(load_precomputed_features(str(path), _table(tmp_path))[0], [[1, 2], [3, 4]])
