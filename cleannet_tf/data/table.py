"""The LabelTable every reader returns, DatasetError, held-out classes and extra verified labels.

Notation: N images, C classes. Bad input raises `DatasetError` naming the file and the 1-based line
(the header, when there is one, is line 1). Input rows that are not in the table are counted in
`LabelTable.skipped` under a reason and logged; nothing is dropped silently. Blank lines and Windows
line endings are tolerated everywhere. Imports nothing of the package.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

__all__ = ["CALIBRATION_SKIP_REASON", "FORMATS", "HELDOUT_SKIP_REASON", "SPLITS", "SPLIT_TEST", "SPLIT_TRAIN",
           "SPLIT_VAL", "UNKNOWN", "DatasetError", "LabelTable", "apply_heldout", "read_heldout_list"]

SPLITS = ("train", "val", "test")



SPLIT_TRAIN, SPLIT_VAL, SPLIT_TEST = 0, 1, 2



UNKNOWN = -1  # verification label of an image nobody verified



FORMATS = ("food101n", "clothing1m", "tsv")



HELDOUT_SKIP_REASON = "verified_train rows of held-out classes"
CALIBRATION_SKIP_REASON = ("verified_train rows of calibration classes (cleannet.calibration_fraction: CleanNet does "
                           "not train on them; cleannet-verify calibrates its score on them)")



_MAX_EXAMPLES = 5  # examples named in error and warning messages



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



def _where(path: str, lineno: int) -> str:
    return f"{path}, line {lineno}"



def _require_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found (expected {what} there).")
    return path



def _numbered_lines(path: str) -> list[tuple[int, str]]:
    """Returns (1-based line number, line without its line ending) for each non-blank line.

    Universal newlines turn "\\r\\n" into "\\n"; a UTF-8 byte-order mark is dropped.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data[:e.start].count(b"\n") + 1
        raise DatasetError(f"{_where(path, lineno)}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} cannot be "
                           "decoded): save the file as UTF-8.") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return [(lineno, line) for lineno, line in enumerate(text.split("\n"), 1) if line.strip()]



def _leaves_root(key: str) -> bool:
    """Whether a relative dataset key names a file outside its root (absolute, or `..` past the top)."""
    if not key.startswith(("/", "\\")) and ".." not in key and not (len(key) > 1 and key[1] == ":"):
        return False  # the fast path for the usual key
    normalized = os.path.normpath(key)
    return os.path.isabs(key) or normalized == os.pardir or normalized.startswith(os.pardir + os.sep)



def _check_inside_root(key: str, where: str, root: str) -> None:
    if _leaves_root(key):
        raise DatasetError(f"{where}: key {key!r} leaves the dataset root {root} (an absolute path or '..' past "
                           "it); keys are paths inside the root (symbolic links inside it are fine).")



def _tab_fields(line: str) -> list[str]:
    return [field.strip() for field in line.split("\t")]



def _check_unique_names(names: Sequence[str], linenos: Sequence[int], path: str) -> None:
    first_line: dict[str, int] = {}
    for name, lineno in zip(names, linenos, strict=True):
        if name in first_line:
            raise DatasetError(f"{_where(path, lineno)}: duplicate class {name!r} (also on line {first_line[name]}).")
        first_line[name] = lineno



def _find_missing_images(paths: Sequence[str], linenos: Sequence[int], list_file: str) -> list[str]:
    """Returns "path (file, line N)" for each path not on disk; one os.path.exists per path."""
    exists = os.path.exists
    return [f"{path} ({_where(list_file, lineno)})"
            for path, lineno in zip(paths, linenos, strict=True) if not exists(path)]



def _raise_if_missing(missing: list[str]) -> None:
    if missing:
        examples = "; ".join(missing[:_MAX_EXAMPLES])
        n_shown = min(len(missing), _MAX_EXAMPLES)
        raise DatasetError(f"{len(missing)} listed image(s) not found on disk. First {n_shown}: {examples}. "
                           "Fix the list or the images, or set data.check_images=False to skip this check.")



def _add_skipped(skipped: dict[str, int], reason: str, count: int) -> None:
    if count:
        skipped[reason] = skipped.get(reason, 0) + count
        logging.warning("Skipped %d input row(s): %s.", count, reason)



def _check_no_empty_class(labels: Sequence[int], class_names: Sequence[str], class_file: str,
                          class_linenos: Sequence[int], where_rows: str) -> None:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        named = ", ".join(f"{class_names[i]!r} ({_where(class_file, class_linenos[i])})"
                          for i in empty[:_MAX_EXAMPLES])
        raise DatasetError(f"{len(empty)} class(es) have no image in {where_rows}: {named}.")



def _make_table(keys: list[str], paths: list[str], class_names: Sequence[str], labels: list[int],
                verification: list[int], split: list[int], skipped: dict[str, int]) -> LabelTable:
    """Builds the numpy arrays once from the parsed Python lists."""
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
    _require_file(path, "a held-out class list (class<TAB>0|1 per line)")
    class_index = {name: i for i, name in enumerate(class_names)}
    heldout = np.zeros(len(class_names), dtype=bool)
    listed_on: dict[str, int] = {}
    first = True
    for lineno, line in _numbered_lines(path):
        fields = _tab_fields(line) if "\t" in line else line.strip().rsplit(None, 1)
        if len(fields) != 2 or fields[1] not in ("0", "1"):
            if first:
                first = False
                continue  # header
            raise DatasetError(f"{_where(path, lineno)}: expected 'class<TAB>0' (held out) or 'class<TAB>1' (kept). "
                               f"Got: {line.strip()!r}.")
        first = False
        name, keep = fields
        if name not in class_index:
            raise DatasetError(f"{_where(path, lineno)}: unknown class {name!r} (not in the dataset's "
                               f"{len(class_names)} classes).")
        if name in listed_on:
            raise DatasetError(f"{_where(path, lineno)}: class {name!r} listed twice (also on line {listed_on[name]}).")
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
    _add_skipped(skipped, reason, int(np.count_nonzero(remove)))
    return dataclasses.replace(table, verification=verification, heldout_classes=table.heldout_classes | heldout_mask,
                               skipped=skipped)
