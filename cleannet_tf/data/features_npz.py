"""data.features: precomputed features in an .npz (keys, features), aligned to a LabelTable.

The .npz reader every module uses (load_npz, CorruptFileError). Imports `data.reading`, `data.table`.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib

import numpy as np
from absl import logging

from cleannet_tf.data.reading import MAX_EXAMPLES, DatasetError, require_file
from cleannet_tf.data.table import SPLIT_TEST, LabelTable


def load_precomputed_features(npz_path: str, table: LabelTable) -> tuple[np.ndarray, np.ndarray]:
    """Reads `data.features`: an .npz with `keys` (M,) str and `features` (M, D), aligned to the table.

    Every noisy-pool row (train/val) needs its key in the file; test rows may be absent (detection never uses
    them). Extra keys are ignored (and logged).

    Returns:
        features (N, D) float32, row i = features of `table.keys[i]` (zeros where absent), and valid (N,) bool,
        False for the absent test rows.
    """
    require_file(npz_path, "an .npz with arrays 'keys' (N,) and 'features' (N, D)")

    try:
        # An uncompressed member (np.savez) is memory-mapped: only the aligned copy is held in memory.
        npz = load_npz(npz_path, fix="Check data.features: write it with np.savez(path, keys=..., features=...).",
                       mmap=("features",), names=("keys", "features"))  # other members are never read
    except CorruptFileError as error:
        raise DatasetError(str(error)) from error
    arrays = {name: npz[name] for name in ("keys", "features") if name in npz}
    absent = [name for name in ("keys", "features") if name not in arrays]
    if absent:
        with zipfile.ZipFile(npz_path) as archive:
            names_in_file = [name.removesuffix(".npy") for name in archive.namelist()]
        raise DatasetError(f"{npz_path}: lacks array(s) {', '.join(absent)}; has {names_in_file}.")
    file_keys, features = arrays["keys"], arrays["features"]
    if file_keys.dtype.kind == "S":
        try:
            file_keys = np.char.decode(file_keys, "utf-8")
        except UnicodeDecodeError:
            bad = next(i for i, key in enumerate(file_keys.reshape(-1)) if not _is_utf8(key))
            raise DatasetError(f"{npz_path}: 'keys' holds bytes that are not UTF-8, e.g. key {bad} "
                               f"{bytes(file_keys.reshape(-1)[bad])[:80]!r}; write the keys as str.") from None
    if file_keys.ndim != 1 or file_keys.dtype.kind != "U":
        raise DatasetError(f"{npz_path}: 'keys' must be a 1-D array of strings; got shape {file_keys.shape}, "
                           f"dtype {file_keys.dtype}.")
    if features.ndim != 2:
        raise DatasetError(f"{npz_path}: 'features' must be 2-D (N, D); got shape {features.shape}.")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise DatasetError(f"{npz_path}: 'features' must be numeric; got dtype {features.dtype}.")
    if len(features) != len(file_keys):
        raise DatasetError(f"{npz_path}: {len(file_keys)} keys but {len(features)} feature rows.")

    order = np.argsort(file_keys, kind="stable")
    sorted_keys = file_keys[order]
    duplicated = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if len(duplicated):
        raise DatasetError(f"{npz_path}: {len(duplicated)} duplicate key(s), e.g. {str(duplicated[0])!r}.")
    position = np.searchsorted(sorted_keys, table.keys)
    position = np.minimum(position, max(len(sorted_keys) - 1, 0))
    found = (sorted_keys[position] == table.keys) if len(sorted_keys) else np.zeros(len(table), dtype=bool)
    pool = table.split != SPLIT_TEST
    if not found[pool].all():
        missing_keys = table.keys[pool & ~found]
        raise DatasetError(f"{npz_path}: {len(missing_keys)} of the dataset's {int(pool.sum())} train/val keys have "
                           f"no features, e.g. {[str(k) for k in missing_keys[:MAX_EXAMPLES]]}.")
    aligned = np.zeros((len(table), features.shape[1]), dtype=np.float32)
    rows = order[position]
    block = max(1, BLOCK_BYTES // (4 * max(features.shape[1], 1)))  # rows: bounded temporaries on 1M rows
    for start in range(0, len(table), block):
        chunk_found = found[start:start + block]
        chunk = features[rows[start:start + block][chunk_found]].astype(np.float32, copy=False)
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            first_bad = start + int(np.flatnonzero(chunk_found)[np.argmax(bad)])
            raise DatasetError(f"{npz_path}: features of key {str(table.keys[first_bad])!r} contain NaN or Inf.")
        aligned[start:start + block][chunk_found] = chunk
    n_extra = len(file_keys) - int(found.sum())
    if n_extra:
        logging.info("%s: %d keys not in the dataset ignored.", npz_path, n_extra)
    n_absent_test = int((~found).sum())
    if n_absent_test:
        logging.info("%s: %d test rows have no features (not needed: detection uses the train/val rows).",
                     npz_path, n_absent_test)
    logging.info("Loaded precomputed features %s from %s.", aligned.shape, npz_path)
    return aligned, found


def _is_utf8(key: bytes) -> bool:
    try:
        key.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


BLOCK_BYTES = 32 << 20  # float32 rows aligned at a time

# What np.load raises on a truncated or corrupt file.
_CORRUPT_FILE_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


class CorruptFileError(ValueError):
    """A NumPy file that exists but cannot be read; the message names it."""


def memory_budget_bytes() -> int:
    """Half of this machine's physical memory: the most one .npz member may inflate to."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def load_npz(path: str, *, fix: str = "", mmap: tuple[str, ...] = (), names: tuple[str, ...] | None = None,
             max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of the .npz at `path` (only `names` when given; absent ones are left out), read now (no pickles).

    Every member read is sized before it is inflated: the npy header's shape x itemsize must fit the zip entry's
    uncompressed size (which bounds inflating) and `max_bytes` (default: memory_budget_bytes()). Members not in
    `names` are never read. mmap: names returned as read-only np.memmap views of the file instead when stored
    uncompressed (np.savez; np.savez_compressed members are read whole).

    Raises:
        CorruptFileError: "PATH is not a valid .npz (truncated or corrupt): ...", "PATH: member NAME.npy ... over
        the limit ...", then `fix` (what to do).
    """
    max_bytes = memory_budget_bytes() if max_bytes is None else max_bytes
    suffix = f" {fix}" if fix else ""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            if not members and archive.infolist():
                raise ValueError("it holds no .npy members")
            wanted = [name for name in (members if names is None else names) if name in members]
            arrays = {}
            for name in wanted:
                mapped = _stored_member(path, name, suffix) if name in mmap else None
                arrays[name] = mapped if mapped is not None else _read_member(path, archive, members[name],
                                                                              max_bytes, suffix)
            return arrays
    except FileNotFoundError:
        raise
    except CorruptFileError:
        raise
    except ValueError as error:
        if "allow_pickle" not in str(error):
            raise CorruptFileError(f"{path} is not a valid .npz (truncated or corrupt): {error}.{suffix}") from error
        raise CorruptFileError(f"{path} holds Python objects (pickled arrays), which are not read: save plain "
                               f"arrays (e.g. keys as str).{suffix}") from error
    except _CORRUPT_FILE_ERRORS as error:
        raise CorruptFileError(f"{path} is not a valid .npz (truncated or corrupt): {error}.{suffix}") from error


def _member_header(path: str, member, info: zipfile.ZipInfo, suffix: str) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, bytes before the data) of an .npy member whose header's shape x itemsize
    fills its zip entry exactly (the entry's uncompressed size bounds inflating it)."""
    version = np.lib.format.read_magic(member)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(member)
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    declared = math.prod(shape) * dtype.itemsize
    if member.tell() + declared != info.file_size:
        raise CorruptFileError(f"{path}: member {info.filename} declares shape {shape} of {dtype} ({declared} "
                               f"bytes) but its zip entry holds {info.file_size - member.tell()} bytes of data "
                               f"(truncated or corrupt).{suffix}")
    return shape, fortran_order, dtype, member.tell()


def _read_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int,
                 suffix: str) -> np.ndarray:
    """One member, after its npy header's size is checked against the zip entry's and against max_bytes."""
    if info.file_size > max_bytes:
        raise CorruptFileError(f"{path}: member {info.filename} inflates to {info.file_size} bytes, over the limit "
                               f"of {max_bytes}.{suffix}")
    with archive.open(info) as member:
        shape, fortran_order, dtype, header_size = _member_header(path, member, info, suffix)
        declared = info.file_size - header_size
        array = np.empty(shape, dtype=dtype, order="F" if fortran_order else "C")
        flat = array.reshape(-1, order="A").view(np.uint8) if declared else np.empty(0, np.uint8)
        done = 0
        while done < declared:  # in blocks: no second whole copy of the member
            block = member.read(min(declared - done, 16 << 20))
            if not block:
                raise EOFError(f"member {info.filename} ends after {done} of {declared} bytes")
            flat[done:done + len(block)] = np.frombuffer(block, np.uint8)
            done += len(block)
    return array


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length (30 bytes)


def _stored_member(path: str, name: str, suffix: str = "") -> np.memmap | None:
    """The array `name` of the .npz at `path` as a read-only memmap if stored uncompressed, else None."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with archive.open(info) as member:
            shape, fortran_order, dtype, header_size = _member_header(path, member, info, suffix)
    if not shape or 0 in shape:  # nothing to map: np.load reads it
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        signature, name_size, extra_size = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"no local header for {name}.npy")
    offset = info.header_offset + _LOCAL_HEADER.size + name_size + extra_size + header_size
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran_order else "C")
