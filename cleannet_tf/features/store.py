"""Sharded on-disk feature store: one feature vector per table row.

Layout of a store directory (plain NumPy files, `np.load` reads each):

    manifest.json                 num_rows, feature_dim, shard_size, extractor, fingerprint
    complete.json                 completion record: written once every shard is present and checked
    keys.npy                      (N,) str: the table keys, row order
    shard-00000.valid.npy         (n,) bool: False where the image could not be read
    shard-00000.features.npy      (n, D) float32 (the manifest's dtype, when it names one): rows [0, n); zeros
                                  where not valid
    shard-00001....

Shard i holds rows [i * shard_size, min(N, (i + 1) * shard_size)). Each file is
written under a temporary name and renamed; the features file is written last,
so a shard counts as finished exactly when its features file exists. A killed
extraction keeps its finished shards and redoes only the others.

Several workers (processes or hosts sharing the directory) fill one store: worker
i of n owns a contiguous block of shards (`task_shards`), writes only those, and
whichever worker finds every shard present at its end checks them and writes
complete.json (`finalize`; idempotent, so two workers finishing together agree).

Imports `data`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Protocol

import numpy as np

from cleannet_tf import atomic_io
from cleannet_tf.data.features_npz import _CORRUPT_FILE_ERRORS, CorruptFileError, load_npz  # noqa: F401 (load_npz: old home)

MANIFEST = "manifest.json"
COMPLETE = "complete.json"


def load_npy(path: str, *, mmap: bool = False, fix: str = "") -> np.ndarray:
    """The array of the .npy at `path` (memory-mapped when `mmap`).

    Raises:
        CorruptFileError: "PATH is not a valid .npy (truncated or corrupt): ...", then `fix`.
    """
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise
    except _CORRUPT_FILE_ERRORS as error:
        raise CorruptFileError(f"{path} is not a valid .npy (truncated or corrupt): {error}." + (
            f" {fix}" if fix else "")) from error


class FeatureSource(Protocol):
    """What later steps need from features: the store, or a precomputed array."""

    num_rows: int
    feature_dim: int

    def valid(self) -> np.ndarray:  # (N,) bool
        ...

    def gather(self, rows: np.ndarray) -> np.ndarray:  # (len(rows), D) float32
        ...


def table_fingerprint(keys: np.ndarray, paths: np.ndarray) -> str:
    """Hash of the row order (keys and paths): a store is only reused for the same table."""
    digest = hashlib.sha256()
    for column in (keys, paths):
        digest.update("\n".join(map(str, column)).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _atomic_save(path: str, array: np.ndarray) -> None:
    """`array` to `path` through a temporary name unique across hosts sharing the folder (atomic_io.temp_path)."""
    with atomic_io.atomic_path(path) as tmp:
        np.save(tmp, array)


def _atomic_write_json(path: str, record: dict) -> None:
    with atomic_io.atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(record, f, indent=2)


class FeatureStore:
    """A store directory (see the module docstring). Open with `create_or_open` or `FeatureStore(dir)`."""

    def __init__(self, directory: str):
        path = os.path.join(directory, MANIFEST)
        if not os.path.exists(path):
            raise FileNotFoundError(f"No feature store at {directory} ({MANIFEST} missing): run cleannet-extract.")
        try:
            with open(path) as f:
                manifest = json.load(f)
            int(manifest["num_rows"]), int(manifest["feature_dim"]), int(manifest["shard_size"])
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptFileError(f"{path} is not a valid feature-store manifest ({error}): delete {directory} "
                                   "and rerun cleannet-extract.") from error
        self.directory = directory
        self.manifest = manifest
        self.num_rows = int(manifest["num_rows"])
        self.feature_dim = int(manifest["feature_dim"])
        self.shard_size = int(manifest["shard_size"])
        self.num_shards = max(1, -(-self.num_rows // self.shard_size))
        self.dtype = np.dtype(manifest.get("dtype", "float32"))

    @classmethod
    def create_or_open(cls, directory: str, *, keys: np.ndarray, paths: np.ndarray, feature_dim: int,
                       shard_size: int, extractor: dict, dtype: str = "float32") -> FeatureStore:
        """Opens the store for this table and extractor, or starts a new one (features kept as `dtype`).

        Raises:
            ValueError: the directory holds a store of another table or extractor.
        """
        fingerprint = table_fingerprint(keys, paths)
        manifest = {"num_rows": len(keys), "feature_dim": int(feature_dim), "shard_size": int(shard_size),
                    "extractor": extractor, "fingerprint": fingerprint, "format": 1}
        if np.dtype(dtype) != np.float32:  # float32 stores keep the manifest they always had
            manifest["dtype"] = np.dtype(dtype).name
        path = os.path.join(directory, MANIFEST)
        if os.path.exists(path):
            with open(path) as f:
                existing = json.load(f)
            for field in ("fingerprint", "extractor", "shard_size", "feature_dim", "num_rows", "dtype"):
                if existing.get(field) != manifest.get(field):
                    raise ValueError(
                        f"{path}: the feature store there was made with another {field} "
                        f"({existing.get(field)!r}, now {manifest.get(field)!r}). Delete {directory} to re-extract, "
                        "or use another --workdir.")
            return cls(directory)
        os.makedirs(directory, exist_ok=True)
        _atomic_save(os.path.join(directory, "keys.npy"), np.asarray(keys, dtype=str))
        _atomic_write_json(path, manifest)
        return cls(directory)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """Table rows [start, end) held by `shard`."""
        start = shard * self.shard_size
        return start, min(self.num_rows, start + self.shard_size)

    def task_shards(self, task_index: int, num_tasks: int) -> list[int]:
        """The contiguous block of shards worker `task_index` of `num_tasks` extracts (blocks differ by <= 1)."""
        if not 0 <= task_index < num_tasks:
            raise ValueError(f"Need 0 <= task_index < num_tasks. Received task_index={task_index}, "
                             f"num_tasks={num_tasks}.")
        return [int(s) for s in np.array_split(np.arange(self.num_shards), num_tasks)[task_index]]

    def _path(self, shard: int, kind: str) -> str:
        return os.path.join(self.directory, f"shard-{shard:05d}.{kind}.npy")

    def is_finished(self, shard: int) -> bool:
        return os.path.exists(self._path(shard, "features"))

    def unfinished_shards(self) -> list[int]:
        return [s for s in range(self.num_shards) if not self.is_finished(s)]

    @property
    def complete(self) -> bool:
        return not self.unfinished_shards()

    def write_shard(self, shard: int, features: np.ndarray, valid: np.ndarray) -> None:
        """Writes one shard: features (n, D) (stored as the store's dtype), valid (n,) bool; n = its row count."""
        start, end = self.shard_rows(shard)
        features = np.asarray(features, dtype=self.dtype)
        if features.shape != (end - start, self.feature_dim) or valid.shape != (end - start,):
            raise ValueError(f"Shard {shard} needs features ({end - start}, {self.feature_dim}) and valid "
                             f"({end - start},). Received: {features.shape} and {valid.shape}")
        _atomic_save(self._path(shard, "valid"), np.asarray(valid, dtype=bool))
        _atomic_save(self._path(shard, "features"), features)  # last: marks the shard finished

    def _load(self, path: str, *, mmap: bool = False) -> np.ndarray:
        return load_npy(path, mmap=mmap, fix=f"Delete it and rerun cleannet-extract (it recomputes what is "
                                             f"missing), or delete {self.directory} to extract everything again.")

    @property
    def finalized(self) -> bool:
        """True once `finalize` wrote the completion record."""
        return os.path.exists(os.path.join(self.directory, COMPLETE))

    def finalize(self) -> dict | None:
        """Checks every shard and writes complete.json; None (nothing written) while shards are missing.

        Returns the record: num_rows, num_shards, valid_rows.

        Raises:
            ValueError: a shard file has the wrong shape or dtype (names the file).
        """
        if not self.complete:
            return None
        valid_rows = 0
        for shard in range(self.num_shards):
            start, end = self.shard_rows(shard)
            for kind, shape, dtype in (("valid", (end - start,), np.bool_),
                                       ("features", (end - start, self.feature_dim), self.dtype)):
                array = self._load(self._path(shard, kind), mmap=True)
                if array.shape != shape or array.dtype != dtype:
                    raise ValueError(f"{self._path(shard, kind)}: shape {array.shape} {array.dtype}, expected "
                                     f"{shape} {np.dtype(dtype)}. Delete it and run cleannet-extract again.")
                if kind == "valid":
                    valid_rows += int(np.count_nonzero(array))
                del array
        record = {"num_rows": self.num_rows, "num_shards": self.num_shards, "valid_rows": valid_rows}
        _atomic_write_json(os.path.join(self.directory, COMPLETE), record)
        return record

    def keys(self) -> np.ndarray:
        return self._load(os.path.join(self.directory, "keys.npy"))

    def _check_complete(self) -> None:
        missing = self.unfinished_shards()
        if missing:
            raise RuntimeError(f"Feature store {self.directory} is incomplete ({len(missing)} of {self.num_shards} "
                               "shards missing): run cleannet-extract again to finish it.")

    def valid(self) -> np.ndarray:
        """(N,) bool: rows whose image was read."""
        self._check_complete()
        if self.num_rows == 0:
            return np.zeros(0, dtype=bool)
        return np.concatenate([self._load(self._path(s, "valid")) for s in range(self.num_shards)])

    def shard_features(self, shard: int, mmap: bool = True) -> np.ndarray:
        """(n, D) float32 features of one shard (memory-mapped by default)."""
        features = self._load(self._path(shard, "features"), mmap=mmap)
        start, end = self.shard_rows(shard)
        if features.shape != (end - start, self.feature_dim):
            raise CorruptFileError(f"{self._path(shard, 'features')}: shape {features.shape}, expected "
                                   f"({end - start}, {self.feature_dim}) (truncated or from another store). Delete "
                                   "it and rerun cleannet-extract to recompute that shard.")
        return features

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Features of `rows` (any order): (len(rows), D) of the store's dtype, read through memory maps."""
        self._check_complete()
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.feature_dim), dtype=self.dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise IndexError(f"Rows must be in [0, {self.num_rows}). Received min {rows.min()}, max {rows.max()}")
        shard_of_row = rows // self.shard_size
        for shard in np.unique(shard_of_row):
            where = np.nonzero(shard_of_row == shard)[0]
            out[where] = self.shard_features(int(shard))[rows[where] - shard * self.shard_size]
        return out

    def load_all(self) -> np.ndarray:
        """(N, D) float32 in memory: for tables that fit."""
        return self.gather(np.arange(self.num_rows))


class ArrayFeatures:
    """Features held in memory, e.g. from `data.features` (a precomputed .npz)."""

    def __init__(self, features: np.ndarray, valid: np.ndarray | None = None):
        self.features = np.asarray(features, dtype=np.float32)
        if self.features.ndim != 2:
            raise ValueError(f"Features must be (N, D). Received shape {self.features.shape}")
        self.num_rows, self.feature_dim = self.features.shape
        self._valid = np.ones(self.num_rows, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)

    def valid(self) -> np.ndarray:
        return self._valid

    def gather(self, rows: np.ndarray) -> np.ndarray:
        return self.features[np.asarray(rows, dtype=np.int64)]

    def load_all(self) -> np.ndarray:
        return self.features
