"""The demo's images: two-digit classes drawn from scikit-learn's 8x8 digits, noisy labels, held-out classes.

What a class is (KINDS, class_names_of), which source digits go to train and test (split_source_digits), and
how an image is rendered (_render, shifts and gains, seeded). Imports nothing of the package; the dataset on
disk is data/demo.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np
from PIL import Image

# Independent random streams: changing one setting does not reshuffle the others.
_STREAM_SOURCES, _STREAM_NOISE, _STREAM_KEYS, _STREAM_RENDER, _STREAM_VERIFY, _STREAM_HELDOUT = range(1, 7)
# True digit -> the digit it is commonly mistaken for (no digit maps to itself).
LOOKALIKE: dict[int, int] = {0: 6, 1: 7, 2: 7, 3: 8, 4: 9, 5: 6, 6: 5, 7: 1, 8: 3, 9: 4}


@dataclasses.dataclass(frozen=True)
class _Kind:
    num_classes: int
    digits_per_image: int
    images_per_class: int  # default
    test_images_per_class: int  # default
    heldout_counts: tuple[int, ...]  # held-out lists always written


KINDS: dict[str, _Kind] = {
    "digits": _Kind(10, 1, 300, 50, (5,)),
    "two_digits": _Kind(100, 2, 60, 10, (10, 50)),
}


DIGIT_PIXELS = 32  # each 8x8 source digit is drawn at 32x32


TEST_SOURCE_FRACTION = 0.2


_MAX_SHIFT = 2


_GAIN_RANGE = (0.85, 1.15)


def _kind(kind: str) -> _Kind:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}. Received: kind={kind!r}")
    return KINDS[kind]


def class_names_of(kind: str) -> tuple[str, ...]:
    """(C,) class names of a kind: digit_0..digit_9 or pair_00..pair_99."""
    if _kind(kind).digits_per_image == 1:
        return tuple(f"digit_{d}" for d in range(10))
    return tuple(f"pair_{c:02d}" for c in range(100))


def digits_of_class(class_id: int, kind: str) -> tuple[int, ...]:
    """The digits drawn in an image of class `class_id`, left to right: (d,) or (tens, units)."""
    return (class_id,) if _kind(kind).digits_per_image == 1 else (class_id // 10, class_id % 10)


def _class_of(digits: Sequence[int]) -> int:
    return digits[0] if len(digits) == 1 else digits[0] * 10 + digits[1]


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(1797, 8, 8) float64 images in 0..16 and (1797,) int targets, from the scikit-learn package (read-only)."""
    from sklearn.datasets import load_digits  # lazy: only the demo needs scikit-learn; reads a bundled file

    digits = load_digits()
    images, targets = np.array(digits.images), np.array(digits.target)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


def split_source_digits(seed: int, targets: np.ndarray | None = None) -> tuple[dict[int, np.ndarray],
                                                                              dict[int, np.ndarray]]:
    """Splits the load_digits indices per digit into an image-list pool (80%) and a test pool (20%).

    Args:
        seed: the dataset seed.
        targets: (1797,) digit of each source image; default load_digits().target.

    Returns:
        (pool, test): digit -> sorted int array of source indices; disjoint, together all sources.
    """
    if targets is None:
        targets = _load_digits()[1]
    rng = np.random.default_rng([seed, _STREAM_SOURCES])
    pool, test = {}, {}
    for digit in range(10):
        indices = rng.permutation(np.flatnonzero(targets == digit))
        cut = len(indices) - int(round(TEST_SOURCE_FRACTION * len(indices)))
        pool[digit], test[digit] = np.sort(indices[:cut]), np.sort(indices[cut:])
    return pool, test


class _Dealer:
    """Deals source indices per digit without replacement, reshuffling a digit's pool when it runs out."""

    def __init__(self, pools: dict[int, np.ndarray], rng: np.random.Generator):
        self._pools, self._rng = pools, rng
        self._decks: dict[int, list[int]] = {d: [] for d in pools}

    def deal(self, digit: int) -> int:
        deck = self._decks[digit]
        if not deck:
            deck.extend(self._rng.permutation(self._pools[digit]).tolist())
        return deck.pop()


@functools.cache
def _source_tiles() -> np.ndarray:
    """(1797, 32, 32) float32 in 0..255: every source digit upscaled (bilinear), read-only."""
    images = _load_digits()[0]
    tiles = np.empty((len(images), DIGIT_PIXELS, DIGIT_PIXELS), np.float32)
    for i, image in enumerate(images):
        small = Image.fromarray((image * (255.0 / 16.0)).astype(np.float32))  # mode "F"
        tiles[i] = np.asarray(small.resize((DIGIT_PIXELS, DIGIT_PIXELS), Image.Resampling.BILINEAR))
    tiles.setflags(write=False)
    return tiles


def _shift(tile: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Moves `tile` (H, W) down by dy and right by dx pixels (negative: up / left), filling with 0."""
    out = np.zeros_like(tile)
    h, w = tile.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = tile[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def _render(tiles: np.ndarray, sources: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Source digits side by side, each shifted, with one intensity gain: (32, 32 * len(sources), 3) uint8."""
    parts = [_shift(tiles[s], *(int(v) for v in rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=2))) for s in sources]
    image = np.concatenate(parts, axis=1) * rng.uniform(*_GAIN_RANGE)
    gray = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _hex_keys(count: int, rng: np.random.Generator) -> list[str]:
    """`count` distinct 32-digit hex names."""
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < count:
        key = rng.bytes(16).hex()
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys


def _noisy_class(true_class: int, kind: str, noise_type: str, rng: np.random.Generator) -> int:
    if noise_type == "lookalike":
        digits = list(digits_of_class(true_class, kind))
        position = int(rng.integers(len(digits)))
        digits[position] = LOOKALIKE[digits[position]]
        return _class_of(digits)
    other = int(rng.integers(KINDS[kind].num_classes - 1))
    return other + (other >= true_class)


def heldout_classes(num_classes: int, count: int, seed: int) -> np.ndarray:
    """(C,) bool: the `count` classes held out in classes_heldout_<count>.txt (nested across counts)."""
    order = np.random.default_rng([seed, _STREAM_HELDOUT]).permutation(num_classes)
    mask = np.zeros(num_classes, dtype=bool)
    mask[order[:count]] = True
    return mask
