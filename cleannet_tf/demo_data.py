"""The embedded demo dataset: real digit images with label noise at a known rate, in the Food-101N layout.

Source images are scikit-learn's `load_digits()` (1797 real 8x8 handwritten
digits, shipped with the package; nothing is downloaded). Two kinds:

- "digits": 10 classes `digit_0`..`digit_9`, 32x32 images.
- "two_digits": 100 classes `pair_00`..`pair_99`, two real digits side by side
  (32x64; the left digit is the tens). Transfer to classes nobody verified needs
  many classes to learn from; Food-101N has 101.

The source digits are split first (80/20, per digit) so that test images never
reuse a source digit of the noisy pool. Images are made distinct by composing,
shifting by up to 2 pixels and jittering the intensity.

Label noise: exactly round(noise_rate * N) pool images get a wrong label, half
(`lookalike_share`) flipped to a look-alike (`LOOKALIKE`; two_digits flip one of
the two digits) and the rest to a uniformly drawn other class. As in Food-101N,
an image's folder is its noisy class. Some images of every class get
verification labels (verified_train.tsv / verified_val.tsv), and Food-101N style
held-out lists name classes whose verified training rows are to be dropped.
The truth is kept beside the data: meta/truth.tsv and meta/demo_info.json.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil

import numpy as np
from PIL import Image

# Commonly confused handwritten digits: true digit -> the digit it is mistaken for.
LOOKALIKE = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}
KINDS = {
    # kind: (classes, digits per image, default images per class, default test images per class)
    "digits": (10, 1, 300, 50),
    "two_digits": (100, 2, 60, 10),
}
_DIGIT_PIXELS = 32  # each 8x8 digit is drawn at 32x32
_FORMAT_VERSION = 1


@dataclasses.dataclass
class DemoInfo:
    root: str
    kind: str
    class_names: tuple[str, ...]
    num_images: int
    num_test_images: int
    num_noisy: int
    noise_rate: float
    num_lookalike: int
    num_uniform: int
    verified_train: int
    verified_val: int
    heldout_lists: tuple[str, ...]
    parameters: dict


def class_names_of(kind: str) -> tuple[str, ...]:
    if kind == "digits":
        return tuple(f"digit_{d}" for d in range(10))
    if kind == "two_digits":
        return tuple(f"pair_{c:02d}" for c in range(100))
    raise ValueError(f"kind must be one of {sorted(KINDS)}. Received: kind={kind!r}")


def _digits_of(class_id: int, kind: str) -> tuple[int, ...]:
    return (class_id,) if kind == "digits" else (class_id // 10, class_id % 10)


def _class_of(digits: tuple[int, ...]) -> int:
    return digits[0] if len(digits) == 1 else digits[0] * 10 + digits[1]


def _render(sources: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Digits (8x8, 0..16) side by side, upscaled, shifted and jittered: (32, 32 * len, 3) uint8."""
    tiles = []
    for digit in sources:
        tile = Image.fromarray((digit * 15.9).astype(np.uint8)).resize((_DIGIT_PIXELS, _DIGIT_PIXELS),
                                                                      Image.BILINEAR)
        tile = np.asarray(tile, dtype=np.float32)
        dy, dx = rng.integers(-2, 3, size=2)
        tile = np.roll(np.roll(tile, dy, axis=0), dx, axis=1)
        tiles.append(tile)
    image = np.concatenate(tiles, axis=1) * rng.uniform(0.85, 1.15)
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _split_sources(targets: np.ndarray, rng: np.random.Generator) -> tuple[dict, dict]:
    """Per digit, 80% of the source images for the noisy pool, 20% for the test set."""
    pool, test = {}, {}
    for digit in range(10):
        indices = rng.permutation(np.nonzero(targets == digit)[0])
        cut = int(round(0.8 * len(indices)))
        pool[digit], test[digit] = indices[:cut], indices[cut:]
    return pool, test


def _noisy_label(true_class: int, kind: str, noise_type: str, num_classes: int, rng: np.random.Generator) -> int:
    if noise_type == "lookalike":
        digits = list(_digits_of(true_class, kind))
        position = int(rng.integers(len(digits)))
        digits[position] = LOOKALIKE[digits[position]]
        return _class_of(tuple(digits))
    other = int(rng.integers(num_classes - 1))
    return other + (other >= true_class)


def _write_heldout(meta: str, class_names, count: int, seed: int) -> str:
    held = set(np.random.default_rng([seed, 7, count]).choice(len(class_names), size=count, replace=False).tolist())
    name = f"classes_heldout_{count}.txt"
    with open(os.path.join(meta, name), "w") as f:
        f.write("class_name\tkeep\n")
        for c, class_name in enumerate(class_names):
            f.write(f"{class_name}\t{0 if c in held else 1}\n")
    return name


def generate_demo_dataset(root: str, *, kind: str = "digits", noise_rate: float = 0.3,
                          images_per_class: int | None = None, heldout: int = 0, seed: int = 0,
                          lookalike_share: float = 0.5, verified_fraction_train: float = 0.15,
                          verified_fraction_val: float = 0.1, test_images_per_class: int | None = None) -> DemoInfo:
    """Writes the demo dataset under `root` (Food-101N layout) unless the same one is already there.

    Returns:
        DemoInfo with counts. Raises ValueError if `root` holds something else.
    """
    num_classes, _, default_per_class, default_test = KINDS.get(kind, (None, None, None, None))
    class_names = class_names_of(kind)
    per_class = images_per_class or default_per_class
    test_per_class = default_test if test_images_per_class is None else test_images_per_class
    if not 0.0 <= noise_rate < 1.0 or not 0.0 <= lookalike_share <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1) and lookalike_share in [0, 1]. Received: "
                         f"noise_rate={noise_rate}, lookalike_share={lookalike_share}")
    if not 0 <= heldout < num_classes:
        raise ValueError(f"heldout must be in [0, {num_classes}). Received: heldout={heldout}")
    parameters = {"kind": kind, "noise_rate": noise_rate, "images_per_class": per_class, "heldout": heldout,
                  "seed": seed, "lookalike_share": lookalike_share, "verified_fraction_train": verified_fraction_train,
                  "verified_fraction_val": verified_fraction_val, "test_images_per_class": test_per_class,
                  "format": _FORMAT_VERSION}
    info_path = os.path.join(root, "meta", "demo_info.json")
    if os.path.exists(info_path):
        with open(info_path) as f:
            existing = json.load(f)
        if existing.get("parameters") == parameters:
            fields = {f.name for f in dataclasses.fields(DemoInfo)}
            return DemoInfo(**{**{k: v for k, v in existing.items() if k in fields},
                               "class_names": tuple(existing["class_names"]),
                               "heldout_lists": tuple(existing["heldout_lists"])})
        raise ValueError(f"{root} holds a demo dataset made with other parameters ({existing.get('parameters')}); "
                         "delete it or choose another folder.")
    if os.path.exists(root) and os.listdir(root):
        raise ValueError(f"{root} exists and is not a demo dataset; choose another folder.")

    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    rng = np.random.default_rng(seed)
    pool_sources, test_sources = _split_sources(digits.target, rng)

    n = num_classes * per_class
    true_classes = np.repeat(np.arange(num_classes), per_class)
    num_noisy = int(round(noise_rate * n))
    noisy_rows = rng.permutation(n)[:num_noisy]
    num_lookalike = int(round(lookalike_share * num_noisy))
    noise_types = np.array(["clean"] * n, dtype=object)
    noise_types[noisy_rows[:num_lookalike]] = "lookalike"
    noise_types[noisy_rows[num_lookalike:]] = "uniform"
    noisy_classes = true_classes.copy()
    for row in noisy_rows:
        noisy_classes[row] = _noisy_label(int(true_classes[row]), kind, noise_types[row], num_classes, rng)

    tmp = f"{root.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = os.path.join(tmp, "meta")
    os.makedirs(meta)
    for split_dir in ("images", "test"):
        for class_name in class_names:
            os.makedirs(os.path.join(tmp, split_dir, class_name))

    keys, truth_lines = [], ["key\ttrue_class\tnoisy_class\tnoise_type\tsource_digits"]
    hex_names = rng.integers(0, 2**63, size=n + num_classes * test_per_class)
    for row in range(n):
        wanted = _digits_of(int(true_classes[row]), kind)
        sources = [int(rng.choice(pool_sources[d])) for d in wanted]
        key = f"{class_names[noisy_classes[row]]}/{hex_names[row]:016x}.jpg"
        with open(os.path.join(tmp, "images", key), "wb") as f:
            f.write(_jpeg(_render([digits.images[s] for s in sources], rng)))
        keys.append(key)
        truth_lines.append(f"{key}\t{class_names[true_classes[row]]}\t{class_names[noisy_classes[row]]}\t"
                           f"{noise_types[row]}\t{','.join(map(str, sources))}")

    test_lines = []
    for c in range(num_classes):
        for i in range(test_per_class):
            sources = [int(rng.choice(test_sources[d])) for d in _digits_of(c, kind)]
            name = f"{hex_names[n + c * test_per_class + i]:016x}"
            with open(os.path.join(tmp, "test", class_names[c], f"{name}.jpg"), "wb") as f:
                f.write(_jpeg(_render([digits.images[s] for s in sources], rng)))
            test_lines.append(f"{class_names[c]}/{name}")
            truth_lines.append(f"test/{class_names[c]}/{name}\t{class_names[c]}\t{class_names[c]}\tclean\t"
                               f"{','.join(map(str, sources))}")

    verified_train, verified_val = [], []
    for c in range(num_classes):  # per noisy class, as a person checks a class folder
        rows = rng.permutation(np.nonzero(noisy_classes == c)[0])
        n_train = int(round(verified_fraction_train * len(rows)))
        n_val = int(round(verified_fraction_val * len(rows)))
        verified_train += rows[:n_train].tolist()
        verified_val += rows[n_train:n_train + n_val].tolist()

    def write(name, header, lines):
        with open(os.path.join(meta, name), "w") as f:
            f.write("".join(f"{line}\n" for line in ([header] if header else []) + lines))

    write("classes.txt", "class_name", list(class_names))
    write("imagelist.tsv", "class_name/key", keys)
    for name, rows in (("verified_train.tsv", verified_train), ("verified_val.tsv", verified_val)):
        write(name, "class_name/key\tverification_label",
              [f"{keys[r]}\t{int(noisy_classes[r] == true_classes[r])}" for r in sorted(rows)])
    write("test.txt", None, test_lines)
    write("truth.tsv", None, truth_lines)
    counts = sorted(({heldout} | ({5} if kind == "digits" else {10, 50})) - {0})
    heldout_lists = tuple(_write_heldout(meta, class_names, count, seed) for count in counts)
    info = DemoInfo(root=os.path.abspath(root), kind=kind, class_names=class_names, num_images=n,
                    num_test_images=len(test_lines), num_noisy=num_noisy, noise_rate=num_noisy / n,
                    num_lookalike=num_lookalike, num_uniform=num_noisy - num_lookalike,
                    verified_train=len(verified_train), verified_val=len(verified_val), heldout_lists=heldout_lists,
                    parameters=parameters)
    with open(os.path.join(meta, "demo_info.json"), "w") as f:
        json.dump({**dataclasses.asdict(info), "lookalike": LOOKALIKE}, f, indent=2)
    if os.path.exists(root):
        os.rmdir(root)  # empty (checked above)
    os.replace(tmp, root)
    return info


def read_demo_truth(root: str) -> dict[str, int]:
    """Key (as in imagelist.tsv, or test/<class>/<name> for test images) -> true class id."""
    with open(os.path.join(root, "meta", "classes.txt")) as f:
        class_ids = {name: i for i, name in enumerate(line.strip() for line in list(f)[1:] if line.strip())}
    truth = {}
    with open(os.path.join(root, "meta", "truth.tsv")) as f:
        next(f)
        for line in f:
            key, true_class = line.rstrip("\n").split("\t")[:2]
            truth[key] = class_ids[true_class]
    return truth
