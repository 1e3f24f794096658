"""The embedded demo dataset: real digit images with label noise at a known rate, in the Food-101N layout.

Source images are scikit-learn's `load_digits()`: 1797 real 8x8 handwritten
digits (values 0..16) that ship inside the scikit-learn package, so nothing is
downloaded. Two kinds:

- "digits": 10 classes `digit_0`..`digit_9`; images 32x32 (H x W).
- "two_digits": 100 classes `pair_00`..`pair_99`, two real digits side by side,
  the left one the tens; images 32x64. Transfer to classes nobody verified needs
  many classes to learn from (Food-101N has 101).

Image variety. The source digits are split first, per digit, into a pool for the noisy image list (80%) and a pool
for the clean test set (20%), so a test image never reuses a source digit of the image list (`split_source_digits`).
Sources are dealt from each pool without replacement (reshuffled when a pool runs out), so every source is used
about equally often. Each 8x8 digit is upscaled (bilinear) to 32x32, shifted by up to 2 pixels in each direction
(zero fill) and its intensity scaled by a factor in [0.85, 1.15]; images are RGB JPEGs (quality 90, deterministic
bytes for a given Pillow build).

Label noise. Exactly round(noise_rate * N) of the N image-list images get a
wrong label, chosen uniformly at random; round(lookalike_share * that) of them
are look-alike flips and the rest uniform flips:

- look-alike: a digit is replaced by the digit it is commonly mistaken for,
  `LOOKALIKE` = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}
  (1/7, 3/8, 4/9 and 5/6 both ways; an open-topped 0 reads as a 6, a 2 with a
  straight base as a 7). For two_digits one of the two digits (either, with
  equal probability) is replaced, so the noisy class shares a digit with the
  true one.
- uniform: the label is replaced by one of the other C - 1 classes, uniformly.

As in Food-101N, an image sits in the folder of its noisy class.

Layout under ROOT (what `cleannet_tf.data.food101n.read_food101n` reads):

    images/<class>/<key>.jpg        image-list images, folder = noisy class
    test/<class>/<key>.jpg          clean test images, folder = true class
    meta/classes.txt                "class_name", then one class per line
    meta/imagelist.tsv              "class_name/key", then "<class>/<key>.jpg"
    meta/verified_train.tsv         "class_name/key<TAB>verification_label", then
    meta/verified_val.tsv             "<class>/<key>.jpg<TAB>1" (label right) or 0
    meta/test.txt                   "<class>/<key>" per line (Food-101 style)
    meta/classes_heldout_<n>.txt    "class_name<TAB>keep", then "<class><TAB>1|0"
                                      (0 = held out: drop its verified train rows)
    meta/truth.tsv                  key, true_class, noisy_class, noise_type
                                      (clean|lookalike|uniform), source_digits
                                      (load_digits indices, comma separated); image
                                      rows keyed as in imagelist.tsv, test rows as
                                      "test/<class>/<key>" (the reader's test keys)
    meta/demo_info.json             DemoInfo fields, parameters, the look-alike map

Keys are 32 random-looking hex digits derived from the seed. Verification:
in every (noisy) class folder, round(verified_fraction_train * size) images go
to verified_train.tsv and round(verified_fraction_val * size) others to
verified_val.tsv, labelled 1 when the noisy label equals the true one. Held-out
lists: digits always get classes_heldout_5.txt, two_digits classes_heldout_10.txt
and classes_heldout_50.txt, plus classes_heldout_<heldout>.txt if asked; the
held-out classes are the first n of one seeded permutation, so smaller lists are
subsets of larger ones.

The same arguments give byte-identical files. The dataset is written to
ROOT.tmp-<pid> and renamed to ROOT at the end, so ROOT never holds half a dataset.
Imports `atomic_io`, `data.demo_render`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterable, Sequence

import numpy as np
from PIL import Image

from cleannet_tf import atomic_io
from cleannet_tf.data import demo_render as render

JPEG_QUALITY = 90
_FORMAT_VERSION = 2
_INFO_FILE = "demo_info.json"


@dataclasses.dataclass(frozen=True)
class DemoInfo:
    """What `generate_demo_dataset` wrote.

    Attributes:
        root: absolute path of the dataset.
        kind: "digits" or "two_digits".
        class_names: (C,) class names, in class id order.
        image_size: (height, width) of every image.
        num_images: N, image-list (noisy pool) images.
        num_test_images: clean test images.
        num_noisy: image-list images whose noisy label is wrong (= round(noise_rate * N)).
        realised_noise_rate: num_noisy / N.
        num_lookalike, num_uniform: noisy images by noise type (sum = num_noisy).
        verified_train, verified_val: rows of verified_train.tsv / verified_val.tsv.
        heldout_lists: file names under meta/ of the held-out class lists.
        parameters: the generation arguments (kind, noise_rate, images_per_class,
            seed, ...) after defaults; a dataset is reused only if they match.
    """

    root: str
    kind: str
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    num_images: int
    num_test_images: int
    num_noisy: int
    realised_noise_rate: float
    num_lookalike: int
    num_uniform: int
    verified_train: int
    verified_val: int
    heldout_lists: tuple[str, ...]
    parameters: dict

    @property
    def seed(self) -> int:
        return self.parameters["seed"]

    @property
    def noise_rate(self) -> float:
        """The requested noise rate (see `realised_noise_rate`)."""
        return self.parameters["noise_rate"]


def _save_jpeg(pixels: np.ndarray, path: str) -> None:
    Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_text(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{line}\n" for line in lines)


def _replace_text(path: str, text: str) -> None:
    """Writes `path` through a temporary file and a rename, so readers see the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def _heldout_list_name(count: int) -> str:
    return f"classes_heldout_{count}.txt"


def _heldout_lines(class_names: Sequence[str], count: int, seed: int) -> list[str]:
    mask = render.heldout_classes(len(class_names), count, seed)
    return ["class_name\tkeep"] + [f"{name}\t{0 if held else 1}" for name, held in zip(class_names, mask, strict=True)]


def _info_json(info: DemoInfo) -> str:
    record = dataclasses.asdict(info)
    del record["root"]  # the folder may be moved; the root is where it is read from
    record["lookalike"] = {str(k): v for k, v in render.LOOKALIKE.items()}
    return json.dumps(record, indent=2) + "\n"


def holds_demo_dataset(root: str) -> bool | None:
    """True: `root` holds a demo dataset (meta/demo_info.json); False: it holds something else (e.g. the user's
    own data, or a file); None: nothing is there (missing, or an empty folder), so the demo may write there."""
    if not os.path.exists(root):
        return None
    if not os.path.isdir(root):
        return False
    if not os.listdir(root):
        return None
    return os.path.isfile(os.path.join(root, "meta", _INFO_FILE))


def _read_info(root: str) -> dict | None:
    """The parsed meta/demo_info.json of `root`; None if `root` is missing or an empty folder."""
    if not os.path.exists(root):
        return None
    if not os.path.isdir(root):
        raise ValueError(f"{root} exists and is not a demo dataset (not a folder); choose another path.")
    if not os.listdir(root):
        return None
    path = os.path.join(root, "meta", _INFO_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{root} exists and is not a demo dataset (no meta/{_INFO_FILE}); to generate the demo "
                         "data choose a new or empty folder (a folder of your own data is read as it is by "
                         "load_table).")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable demo dataset description ({error}); delete {root} or choose "
                         "another folder.") from error
    if not isinstance(record, dict) or not isinstance(record.get("parameters"), dict):
        raise ValueError(f"{path}: not a demo dataset description (no parameters); delete {root} or choose another "
                         "folder.")
    return record


def _info_from_record(root: str, record: dict) -> DemoInfo:
    fields = {f.name for f in dataclasses.fields(DemoInfo)} - {"root"}
    values = {k: record[k] for k in fields}
    return DemoInfo(root=os.path.abspath(root), **{**values, "class_names": tuple(values["class_names"]),
                                                    "image_size": tuple(values["image_size"]),
                                                    "heldout_lists": tuple(values["heldout_lists"])})


def _reuse(root: str, record: dict, parameters: dict, heldout_counts: Sequence[int]) -> DemoInfo:
    """The existing dataset's info if it was made with `parameters`; adds missing held-out lists."""
    if record["parameters"] != parameters:
        raise ValueError(f"{root} holds a demo dataset made with other parameters ({record['parameters']}; asked "
                         f"for {parameters}); delete it or choose another folder.")
    info = _info_from_record(root, record)
    missing = [c for c in heldout_counts if _heldout_list_name(c) not in info.heldout_lists]
    if missing:  # a held-out list does not change the data: add it rather than regenerate
        meta = os.path.join(root, "meta")
        for count in missing:
            _replace_text(os.path.join(meta, _heldout_list_name(count)),
                          "".join(f"{line}\n" for line in _heldout_lines(info.class_names, count, info.seed)))
        lists = {int(name[len("classes_heldout_"):-len(".txt")]) for name in info.heldout_lists} | set(missing)
        info = dataclasses.replace(info, heldout_lists=tuple(_heldout_list_name(c) for c in sorted(lists)))
        _replace_text(os.path.join(meta, _INFO_FILE), _info_json(info))
    return info


def generate_demo_dataset(root: str, *, kind: str = "digits", noise_rate: float = 0.3,
                          images_per_class: int | None = None, heldout: int = 0, seed: int = 0,
                          lookalike_share: float = 0.5, verified_fraction_train: float = 0.15,
                          verified_fraction_val: float = 0.1, test_images_per_class: int | None = None) -> DemoInfo:
    """Writes the demo dataset under `root` (Food-101N layout), unless the same one is already there.

    Args:
        root: dataset folder; must not exist, be empty, or hold a demo dataset made with the same arguments.
        kind: "digits" (10 classes, 32x32 images) or "two_digits" (100 classes, 32x64).
        noise_rate: fraction of the image-list images with a wrong label, in [0, 1].
        images_per_class: images per TRUE class in the image list (N = C * images_per_class);
            default 300 (digits) or 60 (two_digits).
        heldout: if > 0, also write meta/classes_heldout_<heldout>.txt (0 < heldout < C). Only adds a
            list: an existing dataset that differs in nothing else is reused and the list added.
        seed: seeds everything (source split, noise, keys, augmentation, verification, held-out classes).
        lookalike_share: fraction of the wrong labels that are look-alike flips; the rest are uniform.
        verified_fraction_train, verified_fraction_val: fraction of each class folder verified into
            verified_train.tsv / verified_val.tsv (disjoint; sum <= 1).
        test_images_per_class: clean test images per class; default 50 (digits) or 10 (two_digits).

    Returns:
        DemoInfo describing the dataset.

    Raises:
        ValueError: bad arguments, or `root` holds something else (message names the path).
    """
    spec = render._kind(kind)
    class_names = render.class_names_of(kind)
    num_classes = spec.num_classes
    per_class = spec.images_per_class if images_per_class is None else int(images_per_class)
    test_per_class = spec.test_images_per_class if test_images_per_class is None else int(test_images_per_class)
    if per_class < 1 or test_per_class < 0:
        raise ValueError(f"images_per_class must be >= 1 and test_images_per_class >= 0. Received: "
                         f"images_per_class={images_per_class}, test_images_per_class={test_images_per_class}")
    if not 0.0 <= noise_rate <= 1.0 or not 0.0 <= lookalike_share <= 1.0:
        raise ValueError(f"noise_rate and lookalike_share must be in [0, 1]. Received: noise_rate={noise_rate}, "
                         f"lookalike_share={lookalike_share}")
    if min(verified_fraction_train, verified_fraction_val) < 0 or verified_fraction_train + verified_fraction_val > 1:
        raise ValueError(f"verified_fraction_train and verified_fraction_val must be >= 0 with sum <= 1. Received: "
                         f"{verified_fraction_train}, {verified_fraction_val}")
    if not 0 <= heldout < num_classes:
        raise ValueError(f"heldout must be in [0, {num_classes}) for kind={kind!r}. Received: heldout={heldout}")
    parameters = {"kind": kind, "noise_rate": float(noise_rate), "images_per_class": per_class, "seed": int(seed),
                  "lookalike_share": float(lookalike_share), "verified_fraction_train": float(verified_fraction_train),
                  "verified_fraction_val": float(verified_fraction_val), "test_images_per_class": test_per_class,
                  "format": _FORMAT_VERSION}
    heldout_counts = sorted(set(spec.heldout_counts) | ({heldout} if heldout else set()))
    root = os.path.abspath(os.path.expanduser(root))

    record = _read_info(root)
    if record is not None:
        return _reuse(root, record, parameters, heldout_counts)

    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run of an earlier process with this pid
    try:
        with atomic_io.naming_path(root):  # a full disk: DiskFullError naming the dataset folder
            info = _write_dataset(tmp, parameters, class_names, heldout_counts)
        try:
            os.replace(tmp, root)  # atomic; replaces a missing or empty folder only
        except OSError:
            record = _read_info(root)  # another process may have finished the same dataset first
            if record is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return _reuse(root, record, parameters, heldout_counts)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dataclasses.replace(info, root=root)


def _write_dataset(out: str, parameters: dict, class_names: tuple[str, ...], heldout_counts: Sequence[int]) -> DemoInfo:
    """Generates the whole dataset under `out` (which must not exist); demo_info.json is written last."""
    kind, seed = parameters["kind"], parameters["seed"]
    spec = render.KINDS[kind]
    num_classes, per_class, test_per_class = spec.num_classes, parameters["images_per_class"], parameters[
        "test_images_per_class"]
    targets = render._load_digits()[1]
    tiles = render._source_tiles()
    pool_sources, test_sources = render.split_source_digits(seed, targets)

    # Noise: exactly round(rate * n) wrong labels, round(share * that) of them look-alike flips.
    n = num_classes * per_class
    rng = np.random.default_rng([seed, render._STREAM_NOISE])
    true_classes = np.repeat(np.arange(num_classes), per_class)
    num_noisy = int(round(parameters["noise_rate"] * n))
    num_lookalike = int(round(parameters["lookalike_share"] * num_noisy))
    noisy_rows = rng.permutation(n)[:num_noisy]
    noise_types = np.full(n, "clean", dtype=object)
    noise_types[noisy_rows[:num_lookalike]] = "lookalike"
    noise_types[noisy_rows[num_lookalike:]] = "uniform"
    noisy_classes = true_classes.copy()
    for row in np.sort(noisy_rows):
        noisy_classes[row] = render._noisy_class(int(true_classes[row]), kind, noise_types[row], rng)

    num_test = num_classes * test_per_class
    names = render._hex_keys(n + num_test, np.random.default_rng([seed, render._STREAM_KEYS]))
    keys = [f"{class_names[c]}/{name}.jpg" for c, name in zip(noisy_classes, names[:n], strict=True)]
    test_classes = np.repeat(np.arange(num_classes), test_per_class)
    test_keys = [f"{class_names[c]}/{name}" for c, name in zip(test_classes, names[n:], strict=True)]

    meta = os.path.join(out, "meta")
    os.makedirs(meta)
    for folder in ("images", "test"):
        for class_name in class_names:
            os.makedirs(os.path.join(out, folder, class_name))

    # Images, in row order (true class major) so the augmentation stream does not depend on the keys.
    render_rng = np.random.default_rng([seed, render._STREAM_RENDER])
    pool_dealer, test_dealer = render._Dealer(pool_sources, render_rng), render._Dealer(test_sources, render_rng)
    sources = []
    for row in range(n):
        row_sources = [pool_dealer.deal(d) for d in render.digits_of_class(int(true_classes[row]), kind)]
        sources.append(row_sources)
        _save_jpeg(render._render(tiles, row_sources, render_rng), os.path.join(out, "images", keys[row]))
    test_source_list = []
    for row in range(num_test):
        row_sources = [test_dealer.deal(d) for d in render.digits_of_class(int(test_classes[row]), kind)]
        test_source_list.append(row_sources)
        _save_jpeg(render._render(tiles, row_sources, render_rng), os.path.join(out, "test", f"{test_keys[row]}.jpg"))

    # Verification: a person checks a share of every (noisy) class folder.
    verify_rng = np.random.default_rng([seed, render._STREAM_VERIFY])
    verified_train, verified_val = [], []
    for c in range(num_classes):
        rows = verify_rng.permutation(np.flatnonzero(noisy_classes == c))
        n_train = int(round(parameters["verified_fraction_train"] * len(rows)))
        n_val = int(round(parameters["verified_fraction_val"] * len(rows)))
        verified_train += rows[:n_train].tolist()
        verified_val += rows[n_train:n_train + n_val].tolist()

    order = sorted(range(n), key=keys.__getitem__)
    _write_text(os.path.join(meta, "classes.txt"), ["class_name", *class_names])
    _write_text(os.path.join(meta, "imagelist.tsv"), ["class_name/key", *(keys[r] for r in order)])
    for name, rows in (("verified_train.tsv", verified_train), ("verified_val.tsv", verified_val)):
        _write_text(os.path.join(meta, name), ["class_name/key\tverification_label"] + [
            f"{keys[r]}\t{int(noisy_classes[r] == true_classes[r])}" for r in sorted(rows, key=keys.__getitem__)])
    test_order = sorted(range(num_test), key=test_keys.__getitem__)
    _write_text(os.path.join(meta, "test.txt"), [test_keys[r] for r in test_order])
    truth = ["key\ttrue_class\tnoisy_class\tnoise_type\tsource_digits"]
    truth += [f"{keys[r]}\t{class_names[true_classes[r]]}\t{class_names[noisy_classes[r]]}\t{noise_types[r]}\t"
              f"{','.join(map(str, sources[r]))}" for r in order]
    truth += [f"test/{test_keys[r]}\t{class_names[test_classes[r]]}\t{class_names[test_classes[r]]}\tclean\t"
              f"{','.join(map(str, test_source_list[r]))}" for r in test_order]
    _write_text(os.path.join(meta, "truth.tsv"), truth)
    for count in heldout_counts:
        _write_text(os.path.join(meta, _heldout_list_name(count)), _heldout_lines(class_names, count, seed))

    info = DemoInfo(root=out, kind=kind, class_names=class_names,
                    image_size=(render.DIGIT_PIXELS, render.DIGIT_PIXELS * spec.digits_per_image), num_images=n,
                    num_test_images=num_test, num_noisy=num_noisy, realised_noise_rate=num_noisy / n,
                    num_lookalike=num_lookalike, num_uniform=num_noisy - num_lookalike,
                    verified_train=len(verified_train), verified_val=len(verified_val),
                    heldout_lists=tuple(_heldout_list_name(c) for c in heldout_counts), parameters=parameters)
    with open(os.path.join(meta, _INFO_FILE), "w", encoding="utf-8", newline="\n") as f:
        f.write(_info_json(info))
    return info


def read_demo_truth(root: str) -> dict[str, int]:
    """Key -> true class id (index into meta/classes.txt).

    Keys: image-list images as in imagelist.tsv (`<class>/<key>.jpg`, class = noisy
    class); test images as `test/<class>/<key>` (the keys `read_food101n` gives them).
    """
    with open(os.path.join(root, "meta", "classes.txt"), encoding="utf-8") as f:
        names = [line.strip() for line in f.read().splitlines()[1:] if line.strip()]
    class_ids = {name: i for i, name in enumerate(names)}
    truth = {}
    with open(os.path.join(root, "meta", "truth.tsv"), encoding="utf-8") as f:
        next(f)  # header
        for line in f:
            key, true_class = line.rstrip("\n").split("\t")[:2]
            truth[key] = class_ids[true_class]
    return truth
