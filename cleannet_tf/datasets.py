"""Dataset readers: Food-101N, Clothing1M and generic TSV into one `LabelTable`.

Notation: N images, C classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SPLITS = ("train", "val", "test")
SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2
UNKNOWN = -1  # verification label of an image nobody verified


class DatasetError(ValueError):
    """Bad dataset input; the message names the file and line."""


@dataclasses.dataclass
class LabelTable:
    """One row per image.

    Attributes:
        keys: (N,) str. The dataset's own key, e.g. "apple_pie/abc.jpg".
        paths: (N,) str. Absolute image path.
        class_names: tuple of C str. Class id = position.
        labels: (N,) int32. Noisy label (train/val rows); ground truth (test rows).
        verification: (N,) int8. 1 = label verified correct, 0 = verified wrong,
            -1 = not verified.
        split: (N,) int8. 0 train (noisy pool; its verification labels train
            CleanNet), 1 val (noisy pool; verification labels held out for
            evaluation), 2 test (clean labels; never trained on).
        heldout_classes: (C,) bool. Classes whose verified train rows were removed.
        skipped: reason -> count of input rows not in the table.
    """

    keys: np.ndarray
    paths: np.ndarray
    class_names: tuple[str, ...]
    labels: np.ndarray
    verification: np.ndarray
    split: np.ndarray
    heldout_classes: np.ndarray
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.keys)
