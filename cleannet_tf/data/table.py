"""The LabelTable every reader returns, the splits, the formats read, and held-out classes.

Notation: N images, C classes. Bad input raises `DatasetError` naming the file and the 1-based line
(the header, when there is one, is line 1). Input rows that are not in the table are counted in
`LabelTable.skipped` under a reason and logged; nothing is dropped silently. Blank lines and Windows
line endings are tolerated everywhere. What the readers share is in `data.reading` (DatasetError lives there and is
re-exported here). Imports `data.reading`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from absl import logging

from cleannet_tf.data.reading import DatasetError, add_skipped, numbered_lines, require_file, tab_fields, where

__all__ = ["CALIBRATION_SKIP_REASON", "FORMATS", "HELDOUT_SKIP_REASON", "SPLITS", "SPLIT_TEST", "SPLIT_TRAIN",
           "SPLIT_VAL", "UNKNOWN", "DatasetError", "LabelTable", "apply_heldout", "make_table", "read_heldout_list"]

SPLITS = ("train", "val", "test")



SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2



UNKNOWN = -1  # verification label of an image nobody verified



# data.format: "auto" tells the others apart from data.root (data/layout.py).
FORMATS = ("auto", "food101n", "clothing1m", "tsv", "csv", "folder")



HELDOUT_SKIP_REASON = "verified_train rows of held-out classes"
CALIBRATION_SKIP_REASON = ("verified_train rows of calibration classes (cleannet.calibration_fraction: CleanNet does "
                           "not train on them; cleannet-verify calibrates its score on them)")



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

    def summary(self) -> str:
        """One line: rows per split, verified counts, held-out classes, skipped counts."""
        parts = []
        for split_id, split_name in enumerate(SPLITS):
            in_split = self.split == split_id
            verified = self.verification[in_split]
            n_correct = int(np.count_nonzero(verified == 1))
            n_wrong = int(np.count_nonzero(verified == 0))
            text = f"{split_name} {int(np.count_nonzero(in_split))}"
            if n_correct or n_wrong:
                text += f" (verified {n_correct + n_wrong}: {n_correct} correct, {n_wrong} wrong)"
            parts.append(text)
        summary = f"{len(self)} images, {self.num_classes} classes; " + ", ".join(parts)
        n_heldout = int(np.count_nonzero(self.heldout_classes))
        if n_heldout:
            summary += f"; {n_heldout} held-out classes"
        if self.skipped:
            summary += "; skipped: " + ", ".join(f"{reason}: {n}" for reason, n in self.skipped.items())
        else:
            summary += "; nothing skipped"
        return summary



def make_table(keys: list[str], paths: list[str], class_names: Sequence[str], labels: list[int],
               verification: list[int], split: list[int], skipped: dict[str, int]) -> LabelTable:
    """Builds the numpy arrays once from the parsed Python lists (N = len(keys))."""
    return LabelTable(
        keys=np.array(keys, dtype=str),
        paths=np.array(paths, dtype=str),
        class_names=tuple(class_names),
        labels=np.array(labels, dtype=np.int32),
        verification=np.array(verification, dtype=np.int8),
        split=np.array(split, dtype=np.int8),
        heldout_classes=np.zeros(len(class_names), dtype=bool),
        skipped=dict(skipped),
    )



def read_heldout_list(path: str, class_names: Sequence[str]) -> np.ndarray:
    """Reads a Food-101N style `classes_heldout_N.txt`.

    Lines are `class<TAB>1` (keep) or `class<TAB>0` (held out); a first line whose
    second column is not 0/1 is a header. Classes the file does not list are kept.

    Returns:
        (C,) bool, True for held-out classes.
    """
    require_file(path, "a held-out class list (class<TAB>0|1 per line)")
    class_index = {name: i for i, name in enumerate(class_names)}
    heldout = np.zeros(len(class_names), dtype=bool)
    listed_on: dict[str, int] = {}
    first = True
    for lineno, line in numbered_lines(path):
        fields = tab_fields(line) if "\t" in line else line.strip().rsplit(None, 1)
        if len(fields) != 2 or fields[1] not in ("0", "1"):
            if first:
                first = False
                continue  # header
            raise DatasetError(f"{where(path, lineno)}: expected 'class<TAB>0' (held out) or 'class<TAB>1' (kept). "
                               f"Got: {line.strip()!r}.")
        first = False
        name, keep = fields
        if name not in class_index:
            raise DatasetError(f"{where(path, lineno)}: unknown class {name!r} (not in the dataset's "
                               f"{len(class_names)} classes).")
        if name in listed_on:
            raise DatasetError(f"{where(path, lineno)}: class {name!r} listed twice (also on line {listed_on[name]}).")
        listed_on[name] = lineno
        heldout[class_index[name]] = keep == "0"
    if len(listed_on) < len(class_names):
        logging.info("%s lists %d of %d classes; the others are kept.", path, len(listed_on), len(class_names))
    logging.info("%s: %d held-out classes.", path, int(heldout.sum()))
    return heldout



def apply_heldout(table: LabelTable, heldout_mask: np.ndarray, *, reason: str = HELDOUT_SKIP_REASON) -> LabelTable:
    """Returns a new table whose held-out classes lost their verified train rows.

    Train rows of those classes get verification -1 (counted in `skipped` under
    `reason`: HELDOUT_SKIP_REASON, or CALIBRATION_SKIP_REASON for calibration classes); their images, labels
    and val rows stay.

    Args:
        table: the table to transform (unchanged).
        heldout_mask: (C,) bool, True for held-out classes.
    """
    heldout_mask = np.asarray(heldout_mask)
    if heldout_mask.shape != (table.num_classes,) or heldout_mask.dtype != bool:
        raise ValueError(f"heldout_mask must be a ({table.num_classes},) bool array; got shape {heldout_mask.shape}, "
                         f"dtype {heldout_mask.dtype}.")
    remove = heldout_mask[table.labels] & (table.split == SPLIT_TRAIN) & (table.verification != UNKNOWN)
    verification = table.verification.copy()
    verification[remove] = UNKNOWN
    skipped = dict(table.skipped)
    add_skipped(skipped, reason, int(np.count_nonzero(remove)))
    return dataclasses.replace(table, verification=verification, heldout_classes=table.heldout_classes | heldout_mask,
                               skipped=skipped)
