"""The torch-free .pth reader is bounded (element counts, storage sizes, total bytes); the weights' full sha256."""

from __future__ import annotations

import collections
import pickle
import shutil
import struct
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from test_features_efficientnet_lite import _fake_torch

from cleannet_tf.features import efficientnet_lite


class _Storage:
    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


def _checkpoint(path, tensors, storages: dict[str, bytes], *, compression=zipfile.ZIP_STORED):
    """A torch.save zip checkpoint (after _fake_torch).

    tensors: {name: (storage, offset, shape, stride)}; storages: {key: raw bytes}.
    """
    rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2  # _fake_torch's

    class Tensor:
        def __init__(self, *args):
            self.args = (*args, False, collections.OrderedDict())

        def __reduce__(self):
            return rebuild, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel) if isinstance(obj, _Storage) else None

    state = collections.OrderedDict((name, Tensor(*args)) for name, args in tensors.items())
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        with archive.open("ckpt/data.pkl", "w") as file:
            Pickler(file, protocol=2).dump(state)
        for key, data in storages.items():
            with archive.open(f"ckpt/data/{key}", "w", force_zip64=True) as file:
                for start in range(0, len(data), 16 << 20):
                    file.write(data[start:start + (16 << 20)])
    return str(path)


def test_a_stride_zero_tensor_cannot_materialise_more_elements_than_its_storage(tmp_path, monkeypatch):
    """A few hundred bytes once materialised 400 MB (4 GB with a larger shape): one float, stride 0."""
    torch_module, _ = _fake_torch(monkeypatch)
    one = _Storage("0", torch_module.FloatStorage, 1)
    path = _checkpoint(tmp_path / "bomb.pth", {"w": (one, 0, (1000, 1000, 100), (0, 0, 0))},
                       {"0": np.ones(1, np.float32).tobytes()})
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"^{path}: tensor 'w' \(1000, 1000, 100\) \(stride \(0, 0, 0\)\) has "
                                             r"100000000 elements, more than its storage's 1$"):
            efficientnet_lite.read_torch_state_dict(path)
        assert tracemalloc.get_traced_memory()[1] < 10 << 20
    finally:
        tracemalloc.stop()


def test_storages_and_tensors_are_held_to_a_total_byte_limit_before_they_are_read(tmp_path, monkeypatch):
    torch_module, _ = _fake_torch(monkeypatch)
    floats = np.arange(1000, dtype=np.float32)
    storage = _Storage("0", torch_module.FloatStorage, 1000)
    tensors = {f"t{i}": (storage, 0, (1000,), (1,)) for i in range(5)}  # 5 tensors of one 4000-byte storage
    path = _checkpoint(tmp_path / "shared.pth", tensors, {"0": floats.tobytes()})
    assert len(efficientnet_lite.read_torch_state_dict(path, max_bytes=24000)) == 5
    with pytest.raises(ValueError, match=r"tensors up to 't4' hold 20000 bytes, over the limit of 19999$"):
        efficientnet_lite.read_torch_state_dict(path, max_bytes=19999)

    # a deflated storage of 256 MB zeros in a ~250 KB file: refused by its zip header, never inflated
    big = _Storage("0", torch_module.FloatStorage, 64 << 20)
    path = _checkpoint(tmp_path / "deflated.pth", {"w": (big, 0, (64 << 20,), (1,))},
                       {"0": bytes(256 << 20)}, compression=zipfile.ZIP_DEFLATED)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"^{path}: storage '0' of 67108864 elements is over the limit of "
                                             r"100000000 bytes$"):
            efficientnet_lite.read_torch_state_dict(path, max_bytes=100_000_000)
        assert tracemalloc.get_traced_memory()[1] < 10 << 20
    finally:
        tracemalloc.stop()


def test_a_legacy_storage_claiming_more_than_the_file_holds_is_not_allocated(tmp_path, monkeypatch):
    torch_module, rebuild = _fake_torch(monkeypatch)
    path = tmp_path / "legacy.pth"
    storage = _Storage("0", torch_module.FloatStorage, 1 << 28)  # claims 1 GB; the file holds 16 bytes

    class Tensor:
        def __reduce__(self):
            return rebuild, (storage, 0, (4,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.numel) if isinstance(obj, _Storage) else None

    with open(path, "wb") as f:
        for value in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(value, f, protocol=2)
        Pickler(f, protocol=2).dump(collections.OrderedDict(w=Tensor()))
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 1 << 28) + np.ones(4, np.float32).tobytes())
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"storage '0' has 16 bytes, expected 1073741824 \(truncated or corrupt\)"):
            efficientnet_lite.read_torch_state_dict(str(path), max_bytes=2 << 30)
        assert tracemalloc.get_traced_memory()[1] < 10 << 20
    finally:
        tracemalloc.stop()


def test_the_weights_are_checked_against_their_full_sha256(tmp_path, monkeypatch):
    source = efficientnet_lite.checkpoint_path()
    assert len(efficientnet_lite.CHECKPOINT_SHA256) == 64
    assert efficientnet_lite.file_sha256(source) == efficientnet_lite.CHECKPOINT_SHA256
    assert efficientnet_lite.CHECKPOINT_SHA256.startswith(efficientnet_lite.CHECKPOINT_NAME.split("-")[-1][:8])
    tampered = tmp_path / efficientnet_lite.CHECKPOINT_NAME
    shutil.copyfile(source, tampered)
    with open(tampered, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setenv("CLEANNET_TF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(efficientnet_lite, "checkpoint_path", lambda: str(tampered))
    with pytest.raises(ValueError, match=rf"{tampered}: sha256 [0-9a-f]{{64}} is not "
                                         rf"{efficientnet_lite.CHECKPOINT_SHA256}; the file is damaged"):
        efficientnet_lite.imagenet_weights_path()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())
