"""Dataset readers: Food-101N, Clothing1M and generic TSV into one `LabelTable`.

Notation: N images, C classes.

Every reader returns one row per image. Bad input raises `DatasetError` naming
the file and the 1-based line (the header, when there is one, is line 1). Input
rows that are not in the table are counted in `LabelTable.skipped` under a reason
and logged; nothing is dropped silently. Blank lines and Windows line endings are
tolerated everywhere.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from absl import logging

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


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- held-out classes


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


def apply_extra_verified(table: LabelTable, path: str) -> LabelTable:
    """A new table with the verification labels of `path` (verified_train.tsv format) on its training rows.

    They replace the table's own labels of those rows; keys not in the table are counted in `skipped`;
    a validation or test row raises DatasetError (naming the file and line).
    """
    skipped = dict(table.skipped)
    rows = {key: row for row, key in enumerate(table.keys)}
    verification = table.verification.copy()
    for key, (value, lineno) in _read_food101n_verified(_require_file(path, "verification labels"), rows,
                                                        skipped).items():
        if table.split[rows[key]] != SPLIT_TRAIN:
            raise DatasetError(f"{_where(path, lineno)}: {key!r} is a {SPLITS[table.split[rows[key]]]} row; extra "
                               "verification labels go to training rows only.")
        verification[rows[key]] = value
    return dataclasses.replace(table, verification=verification, skipped=skipped)


# --------------------------------------------------------------------------- Food-101N


def _read_food101n_classes(path: str) -> tuple[list[str], list[int]]:
    names, linenos = [], []
    for lineno, line in _numbered_lines(path):
        name = line.strip()
        if not names and name == "class_name":
            continue  # header
        names.append(name)
        linenos.append(lineno)
    if not names:
        raise DatasetError(f"{path}: no classes listed.")
    _check_unique_names(names, linenos, path)
    return names, linenos


def _read_food101n_verified(path: str, key_to_row: dict[str, int],
                            skipped: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Returns key -> (verification label, line). Keys absent from imagelist.tsv are counted, not fatal."""
    verified: dict[str, tuple[int, int]] = {}
    absent = []
    first = True
    for lineno, line in _numbered_lines(path):
        fields = _tab_fields(line)
        is_first, first = first, False
        if len(fields) < 2 or fields[1] not in ("0", "1"):
            if is_first:
                continue  # header, e.g. "class_name/key<TAB>verification_label"
            if len(fields) < 2:
                raise DatasetError(f"{_where(path, lineno)}: expected 'class/key.jpg<TAB>0|1'. Got: {line.strip()!r}.")
            raise DatasetError(f"{_where(path, lineno)}: verification label must be 0 or 1. Got: {fields[1]!r}.")
        key = fields[0]
        if key in verified:
            raise DatasetError(f"{_where(path, lineno)}: duplicate key {key!r} (also on line {verified[key][1]}).")
        if key not in key_to_row:
            absent.append(lineno)
            if len(absent) <= _MAX_EXAMPLES:
                logging.warning("%s: verified key %r is not in meta/imagelist.tsv; row skipped.", _where(path, lineno),
                                key)
            continue
        verified[key] = (int(fields[1]), lineno)
    _add_skipped(skipped, f"{os.path.basename(path)} rows whose key is not in imagelist.tsv", len(absent))
    return verified


def read_food101n(root: str, *, heldout_list: str | None = None, test_root: str | None = None,
                  check_images: bool = True) -> LabelTable:
    """Reads the Food-101N release layout.

    ROOT/meta/classes.txt (header `class_name`), ROOT/meta/imagelist.tsv (header,
    then `class/key.jpg`; images at ROOT/images/<class>/<key>.jpg),
    ROOT/meta/verified_{train,val}.tsv (header, then `class/key.jpg<TAB>0|1`), and an
    optional Food-101 style test list ROOT/meta/test.txt (`class/key`, images at
    ROOT/test/<class>/<key>.jpg, or TEST_ROOT/images/<class>/<key>.jpg).

    Rows: one per imagelist.tsv line (split train, or val when verified_val.tsv
    lists it), then one per test.txt line (split test, key `test/<class>/<key>`).

    Args:
        root: the release folder.
        heldout_list: optional `classes_heldout_N.txt`; see `read_heldout_list`.
        test_root: optional Food-101 root holding the test images.
        check_images: check that every listed image exists.

    Returns:
        The table: N = imagelist rows + test rows.
    """
    root = os.path.abspath(os.path.expanduser(root))
    meta = os.path.join(root, "meta")
    classes_path = _require_file(os.path.join(meta, "classes.txt"), "the Food-101N class list")
    imagelist_path = _require_file(os.path.join(meta, "imagelist.tsv"), "the Food-101N image list")
    verified_paths = [_require_file(os.path.join(meta, f"verified_{name}.tsv"), f"the Food-101N verified_{name} list")
                      for name in ("train", "val")]
    class_names, class_linenos = _read_food101n_classes(classes_path)
    class_index = {name: i for i, name in enumerate(class_names)}
    skipped: dict[str, int] = {}

    keys: list[str] = []
    labels: list[int] = []
    linenos: list[int] = []
    key_to_row: dict[str, int] = {}
    images_dir = os.path.join(root, "images")
    first = True
    for lineno, line in _numbered_lines(imagelist_path):
        key = _tab_fields(line)[0]
        class_name, _, name = key.partition("/")
        is_first, first = first, False
        if is_first and class_name not in class_index:
            logging.info("%s: line %d taken as the header: %r", imagelist_path, lineno, line.strip())
            continue
        if not name:
            raise DatasetError(f"{_where(imagelist_path, lineno)}: expected 'class/key.jpg'. Got: {key!r}.")
        _check_inside_root(key, _where(imagelist_path, lineno), images_dir)
        if class_name not in class_index:
            raise DatasetError(f"{_where(imagelist_path, lineno)}: unknown class {class_name!r} "
                               f"(not in {classes_path}).")
        if key in key_to_row:
            raise DatasetError(f"{_where(imagelist_path, lineno)}: duplicate key {key!r} "
                               f"(also on line {linenos[key_to_row[key]]}).")
        key_to_row[key] = len(keys)
        keys.append(key)
        labels.append(class_index[class_name])
        linenos.append(lineno)
    _check_no_empty_class(labels, class_names, classes_path, class_linenos, imagelist_path)

    images_prefix = os.path.join(images_dir, "")  # string concatenation: os.path.join is slow on 1M rows
    paths = [images_prefix + key for key in keys]
    verification = [UNKNOWN] * len(keys)
    split = [SPLIT_TRAIN] * len(keys)
    train_path, val_path = verified_paths
    verified_train = _read_food101n_verified(train_path, key_to_row, skipped)
    verified_val = _read_food101n_verified(val_path, key_to_row, skipped)
    for key, (value, lineno) in verified_val.items():
        if key in verified_train:
            raise DatasetError(f"{_where(val_path, lineno)}: key {key!r} is in both verified lists "
                               f"(also {_where(train_path, verified_train[key][1])}).")
        row = key_to_row[key]
        verification[row] = value
        split[row] = SPLIT_VAL
    for key, (value, _) in verified_train.items():
        verification[key_to_row[key]] = value
    missing = _find_missing_images(paths, linenos, imagelist_path) if check_images else []

    test_list = os.path.join(meta, "test.txt")
    if os.path.isfile(test_list):
        test_dir = os.path.join(root, "test")
        if not os.path.isdir(test_dir) and test_root:
            test_dir = os.path.join(os.path.abspath(os.path.expanduser(test_root)), "images")
        elif not os.path.isdir(test_dir) and check_images:
            raise DatasetError(f"{test_list} lists test images but {test_dir} does not exist; put the images there or "
                               "set data.test_root to the Food-101 root (with images/<class>/<key>.jpg).")
        test_keys_on: dict[str, int] = {}
        test_paths: list[str] = []
        test_linenos: list[int] = []
        for lineno, line in _numbered_lines(test_list):
            name = line.strip()
            class_name, _, image = name.partition("/")
            if not image:
                raise DatasetError(f"{_where(test_list, lineno)}: expected 'class/key'. Got: {name!r}.")
            _check_inside_root(name, _where(test_list, lineno), test_dir)
            if class_name not in class_index:
                raise DatasetError(f"{_where(test_list, lineno)}: unknown class {class_name!r} "
                                   f"(not in {classes_path}).")
            key = f"test/{name}"
            if key in test_keys_on:
                raise DatasetError(f"{_where(test_list, lineno)}: duplicate key {name!r} "
                                   f"(also on line {test_keys_on[key]}).")
            test_keys_on[key] = lineno
            keys.append(key)
            labels.append(class_index[class_name])
            test_paths.append(os.path.join(test_dir, f"{name}.jpg"))
            test_linenos.append(lineno)
        paths += test_paths
        verification += [UNKNOWN] * len(test_paths)
        split += [SPLIT_TEST] * len(test_paths)
        if check_images:
            missing += _find_missing_images(test_paths, test_linenos, test_list)
    _raise_if_missing(missing)

    table = _make_table(keys, paths, class_names, labels, verification, split, skipped)
    if heldout_list:
        table = apply_heldout(table, read_heldout_list(heldout_list, class_names))
    return table


# --------------------------------------------------------------------------- Clothing1M

_CLOTHING1M_CLASSES = "category_names_eng.txt"
_CLOTHING1M_NOISY_KV = "noisy_label_kv.txt"
_CLOTHING1M_CLEAN_KV = "clean_label_kv.txt"
_CLOTHING1M_NOISY_TRAIN = "noisy_train_key_list.txt"
_CLOTHING1M_CLEAN_LISTS = ("clean_train_key_list.txt", "clean_val_key_list.txt", "clean_test_key_list.txt")


def _clothing1m_file(root: str, name: str) -> str:
    candidates = [os.path.join(root, name), os.path.join(root, "annotations", name)]
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise DatasetError(f"Clothing1M file {name} not found: expected {candidates[0]} or {candidates[1]}.")


def _read_label_kv(path: str, num_classes: int) -> dict[str, int]:
    """Reads `key label` lines. Returns key -> label.

    A fast pass parses the whole file; only when it finds a problem does the
    line-by-line pass run to name the bad line.
    """
    numbered = _numbered_lines(path)
    try:
        labels = {key: int(label) for key, label in (line.split() for _, line in numbered)}
    except ValueError:  # a line without exactly two fields, or a label that is not an integer
        labels = None
    if (labels is not None and len(labels) == len(numbered)
            and (not labels or (min(labels.values()) >= 0 and max(labels.values()) < num_classes))):
        return labels
    return _read_label_kv_line_by_line(path, numbered, num_classes)


def _read_label_kv_line_by_line(path: str, numbered: list[tuple[int, str]], num_classes: int) -> dict[str, int]:
    """The slow form of `_read_label_kv`: raises DatasetError naming the first bad line."""
    labels: dict[str, int] = {}
    label_lines: dict[str, int] = {}
    for lineno, line in numbered:
        fields = line.split()
        if len(fields) != 2:
            raise DatasetError(f"{_where(path, lineno)}: expected 'key label' (e.g. 'images/0/00/1.jpg 4'). "
                               f"Got: {line.strip()!r}.")
        key, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetError(f"{_where(path, lineno)}: label must be an integer. Got: {label_text!r}.") from None
        if not 0 <= label < num_classes:
            raise DatasetError(f"{_where(path, lineno)}: label {label} out of range [0, {num_classes}).")
        if key in labels:
            raise DatasetError(f"{_where(path, lineno)}: duplicate key {key!r} (also on line {label_lines[key]}).")
        labels[key] = label
        label_lines[key] = lineno
    return labels


def _read_key_list(path: str, labels: dict[str, int], kv_path: str, root: str) -> dict[str, int]:
    """Reads one key per line. Returns key -> line, in file order; every key must have a label and be in root."""
    numbered = _numbered_lines(path)
    key_lines = {line.strip(): lineno for lineno, line in numbered}
    if (len(key_lines) == len(numbered) and key_lines.keys() <= labels.keys()
            and not any(map(_leaves_root, key_lines))):
        return key_lines  # fast path; otherwise find the first bad line
    key_lines = {}
    for lineno, line in numbered:
        key = line.strip()
        _check_inside_root(key, _where(path, lineno), root)
        if key in key_lines:
            raise DatasetError(f"{_where(path, lineno)}: duplicate key {key!r} (also on line {key_lines[key]}).")
        if key not in labels:
            raise DatasetError(f"{_where(path, lineno)}: key {key!r} has no label in {kv_path}.")
        key_lines[key] = lineno
    return key_lines


def read_clothing1m(root: str, *, check_images: bool = True) -> LabelTable:
    """Reads the Clothing1M release layout (files in ROOT or ROOT/annotations; images at ROOT/<key>).

    Rows, in this order:
    - noisy_train_key_list.txt keys: label = noisy label; split val if in
      clean_val_key_list.txt, else train. Keys also in clean_test_key_list.txt are
      left out (counted in `skipped`) so test images are never trained on.
    - clean_train / clean_val keys that are not in noisy_train_key_list.txt but have
      a noisy label (the release's ~37k doubly labelled images, disjoint from the 1M
      noisy training set): label = noisy label, split train / val.
    - clean_test_key_list.txt keys: split test, label = clean label.
    Train/val rows with both labels get verification = int(clean == noisy).
    Clean train/val keys without a noisy label are not rows (counted in `skipped`).

    Returns:
        The table: N = noisy train keys + doubly labelled clean keys + clean test keys.
    """
    root = os.path.abspath(os.path.expanduser(root))
    classes_path = _clothing1m_file(root, _CLOTHING1M_CLASSES)
    class_names, class_linenos = [], []
    for lineno, line in _numbered_lines(classes_path):
        class_names.append(line.strip())
        class_linenos.append(lineno)
    if not class_names:
        raise DatasetError(f"{classes_path}: no classes listed.")
    _check_unique_names(class_names, class_linenos, classes_path)
    num_classes = len(class_names)

    noisy_kv_path = _clothing1m_file(root, _CLOTHING1M_NOISY_KV)
    clean_kv_path = _clothing1m_file(root, _CLOTHING1M_CLEAN_KV)
    noisy = _read_label_kv(noisy_kv_path, num_classes)
    clean = _read_label_kv(clean_kv_path, num_classes)
    noisy_train_path = _clothing1m_file(root, _CLOTHING1M_NOISY_TRAIN)
    noisy_train = _read_key_list(noisy_train_path, noisy, noisy_kv_path, root)
    clean_list_paths = [_clothing1m_file(root, name) for name in _CLOTHING1M_CLEAN_LISTS]
    clean_lists = [_read_key_list(path, clean, clean_kv_path, root) for path in clean_list_paths]
    for i in range(3):
        for j in range(i + 1, 3):
            for key, lineno in clean_lists[j].items():
                if key in clean_lists[i]:
                    raise DatasetError(f"{_where(clean_list_paths[j], lineno)}: key {key!r} is also in "
                                       f"{_where(clean_list_paths[i], clean_lists[i][key])}; the clean splits must "
                                       "not overlap.")
    clean_train, clean_val, clean_test = clean_lists
    clean_train_path, clean_val_path, clean_test_path = clean_list_paths

    skipped: dict[str, int] = {}
    keys: list[str] = []
    labels: list[int] = []
    verification: list[int] = []
    split: list[int] = []
    missing: list[str] = []
    exists = os.path.exists
    root_prefix = os.path.join(root, "")  # string concatenation: os.path.join is slow on 1M rows

    def add_rows(key_lines: dict[str, int], list_path: str, row_split: int | None) -> None:
        """Adds rows for keys; row_split None = noisy train rows (split from the clean lists)."""
        n_leaked = n_no_noisy = 0
        for key, lineno in key_lines.items():
            if row_split is None:
                if key in clean_test:
                    n_leaked += 1
                    continue
                label = noisy[key]
                this_split = SPLIT_VAL if key in clean_val else SPLIT_TRAIN
            elif row_split == SPLIT_TEST:
                label = clean[key]
                this_split = SPLIT_TEST
            else:
                if key in noisy_train:
                    continue  # already a row, from noisy_train_key_list.txt
                if key not in noisy:
                    n_no_noisy += 1
                    continue
                label = noisy[key]
                this_split = row_split
            if this_split == SPLIT_TEST:
                verification.append(UNKNOWN)
            else:
                clean_label = clean.get(key)
                verification.append(UNKNOWN if clean_label is None else int(clean_label == label))
            keys.append(key)
            labels.append(label)
            split.append(this_split)
            if check_images and not exists(root_prefix + key):
                missing.append(f"{root_prefix + key} ({_where(list_path, lineno)})")
        name = os.path.basename(list_path)
        _add_skipped(skipped, f"{name} keys also in {os.path.basename(clean_test_path)} (kept as test rows only)",
                     n_leaked)
        _add_skipped(skipped, f"{name} keys without a noisy label in {os.path.basename(noisy_kv_path)}", n_no_noisy)

    add_rows(noisy_train, noisy_train_path, None)
    n_noisy_pool_start = len(keys)
    add_rows(clean_train, clean_train_path, SPLIT_TRAIN)
    add_rows(clean_val, clean_val_path, SPLIT_VAL)
    if len(keys) > n_noisy_pool_start:
        logging.info("Clothing1M: %d clean train/val images outside noisy_train_key_list.txt have a noisy label; "
                     "added as train/val rows.", len(keys) - n_noisy_pool_start)
    n_pool = len(keys)
    add_rows(clean_test, clean_test_path, SPLIT_TEST)
    _raise_if_missing(missing)
    _check_no_empty_class(labels[:n_pool], class_names, classes_path, class_linenos, "the noisy train/val rows")
    paths = [root_prefix + key for key in keys]
    return _make_table(keys, paths, class_names, labels, verification, split, skipped)


# --------------------------------------------------------------------------- generic TSV

_TSV_REQUIRED = ("path", "label")
_TSV_OPTIONAL = ("verified", "split")
_VERIFIED_VALUES = {"1": 1, "0": 0, "": UNKNOWN, "-1": UNKNOWN}


def read_tsv(path: str, *, check_images: bool = True, class_names: Sequence[str] | None = None) -> LabelTable:
    """Reads one tab-separated file with a header naming its columns (any order).

    Columns: `path` (relative to the file's folder, without `..` past it, or absolute), `label` (a class
    name), optional `verified` (1, 0, or empty / -1 = not verified) and `split`
    (train, val or test; default train). Other columns are ignored. Key = `path` as
    written.

    Args:
        path: the .tsv file.
        check_images: check that every listed image exists.
        class_names: the classes in id order; default: the sorted label names found.

    Returns:
        The table: N = data lines.
    """
    path = os.path.abspath(os.path.expanduser(path))
    _require_file(path, "a .tsv file with columns path, label[, verified, split]")
    base = os.path.dirname(path)
    lines = iter(_numbered_lines(path))
    header_line = next(lines, None)
    if header_line is None:
        raise DatasetError(f"{path}: empty file (expected a header with columns path, label[, verified, split]).")
    header_lineno, header_text = header_line
    header = _tab_fields(header_text)
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in columns:
            raise DatasetError(f"{_where(path, header_lineno)}: column {name!r} appears twice in the header.")
        columns[name] = i
    absent = [name for name in _TSV_REQUIRED if name not in columns]
    if absent:
        raise DatasetError(f"{_where(path, header_lineno)}: header lacks column(s) {', '.join(absent)}. "
                           f"Got columns: {header}.")
    extra = [name for name in header if name not in _TSV_REQUIRED + _TSV_OPTIONAL]
    if extra:
        logging.info("%s: columns %s ignored.", path, extra)
    path_col, label_col = columns["path"], columns["label"]
    verified_col, split_col = columns.get("verified"), columns.get("split")

    keys: list[str] = []
    label_names: list[str] = []
    verification: list[int] = []
    split: list[int] = []
    linenos: list[int] = []
    key_lines: dict[str, int] = {}
    for lineno, line in lines:
        fields = _tab_fields(line)
        if len(fields) > len(header):
            raise DatasetError(f"{_where(path, lineno)}: {len(fields)} tab-separated fields but the header has "
                               f"{len(header)}.")
        fields += [""] * (len(header) - len(fields))  # trailing empty optional fields may be cut
        key, label_name = fields[path_col], fields[label_col]
        if not key or not label_name:
            raise DatasetError(f"{_where(path, lineno)}: empty {'path' if not key else 'label'}.")
        if key in key_lines:
            raise DatasetError(f"{_where(path, lineno)}: duplicate path {key!r} (also on line {key_lines[key]}).")
        if not os.path.isabs(key) and _leaves_root(key):
            raise DatasetError(f"{_where(path, lineno)}: path {key!r} leaves the file's folder {base} through '..'; "
                               "write paths inside that folder, or an absolute path.")
        split_name = fields[split_col] if split_col is not None else ""
        if split_name not in SPLITS and split_name != "":
            raise DatasetError(f"{_where(path, lineno)}: split must be train, val or test. Got: {split_name!r}.")
        row_split = SPLITS.index(split_name) if split_name else SPLIT_TRAIN
        verified_text = fields[verified_col] if verified_col is not None else ""
        if verified_text not in _VERIFIED_VALUES:
            raise DatasetError(f"{_where(path, lineno)}: verified must be 1, 0 or empty. Got: {verified_text!r}.")
        value = _VERIFIED_VALUES[verified_text]
        if row_split == SPLIT_TEST and value != UNKNOWN:
            raise DatasetError(f"{_where(path, lineno)}: a test row's label is ground truth; its verified field must "
                               f"be empty. Got: {verified_text!r}.")
        key_lines[key] = lineno
        keys.append(key)
        label_names.append(label_name)
        verification.append(value)
        split.append(row_split)
        linenos.append(lineno)

    if class_names is None:
        class_names = sorted(set(label_names))
        if not class_names:
            raise DatasetError(f"{path}: no data rows after the header.")
    class_index = {name: i for i, name in enumerate(class_names)}
    if len(class_index) != len(class_names):
        raise ValueError(f"class_names has duplicates: {list(class_names)}")
    labels = []
    for name, lineno in zip(label_names, linenos, strict=True):
        if name not in class_index:
            raise DatasetError(f"{_where(path, lineno)}: unknown class {name!r} (not among the "
                               f"{len(class_names)} class_names given).")
        labels.append(class_index[name])
    unused = set(class_names) - set(label_names)
    if unused:
        logging.warning("%s: %d of the given classes have no row, e.g. %s.", path, len(unused), sorted(unused)[:5])
    paths = [os.path.normpath(os.path.join(base, key)) for key in keys]  # join keeps absolute keys as they are
    if check_images:
        _raise_if_missing(_find_missing_images(paths, linenos, path))
    return _make_table(keys, paths, class_names, labels, verification, split, {})


# --------------------------------------------------------------------------- config entry points


def load_table(config, workdir: str, *, steps: Sequence[str] = ()) -> LabelTable:
    """Reads the dataset `config.data` names (generating the demo data first if asked).

    Dispatches on `config.data.format`; root from `config.resolve_data_root`; applies
    `config.data.heldout_list` (any format), or for the demo
    `ROOT/meta/classes_heldout_<demo_heldout>.txt` when demo_heldout > 0. With
    data.demo set, a data.root that holds something other than a demo dataset is the
    user's own data: it is read as it is (format from its layout) with the demo's
    settings, and the log says so.

    Args:
        config: the full cleannet_tf config (`ml_collections.ConfigDict`).
        workdir: the run's work directory (demo data goes to WORKDIR/demo_data when
            data.root is empty).
        steps: pipeline steps about to run (pipeline.STEPS names); what they need of the
            data is checked now, before any training (`check_for_steps`).
    Raises:
        DatasetError: bad input, naming the file and line, or the data lack what `steps` need.
    """
    from cleannet_tf.config import resolve_data_root

    data = config.data
    root = resolve_data_root(config, workdir)
    data_format = data.format
    heldout_list = data.heldout_list
    if data.demo:
        from cleannet_tf import demo_data  # lazy: only the demo needs it

        if data.root and demo_data.holds_demo_dataset(root) is False:
            data_format = _detect_format(root, data_format, data.demo)
            logging.warning("data.root %s is not a demo dataset: using it as a %s dataset with the demo's settings "
                            "(data.demo=%r generates data only in a new or empty folder; --config.data.demo= "
                            "turns that off).", root, data_format, data.demo)
        else:
            if data_format != "food101n":
                raise DatasetError(f"data.demo={data.demo!r} writes its data to {root} in the food101n layout, but "
                                   f"data.format is {data_format!r}: set --config.data.format=food101n, or point "
                                   "data.root at your own dataset.")
            if not os.path.exists(os.path.join(root, "meta", "classes.txt")):
                logging.info("Generating the %r demo dataset under %s.", data.demo, root)
            # Returns at once when the dataset is there; adds a missing held-out list.
            demo_data.generate_demo_dataset(root, kind=data.demo, noise_rate=data.demo_noise_rate,
                                            images_per_class=data.demo_images_per_class or None,
                                            heldout=data.demo_heldout, seed=config.seed)
            if not heldout_list and data.demo_heldout > 0:
                heldout_list = os.path.join(root, "meta", f"classes_heldout_{data.demo_heldout}.txt")

    if data_format == "food101n":
        table = read_food101n(root, test_root=data.test_root or None, check_images=data.check_images)
    elif data_format == "clothing1m":
        table = read_clothing1m(root, check_images=data.check_images)
    elif data_format == "tsv":
        if os.path.isdir(root):
            raise DatasetError(f"data.root {root} is a folder; for data.format=tsv it is the .tsv file itself "
                               "(image paths relative to the file's folder).")
        table = read_tsv(root, check_images=data.check_images)
    else:
        raise ValueError(f"config.data.format: must be one of {', '.join(FORMATS)}. Received: {data_format!r}")
    if heldout_list:
        heldout_path = os.path.abspath(os.path.expanduser(heldout_list))
        table = apply_heldout(table, read_heldout_list(heldout_path, table.class_names))
    from cleannet_tf.config import resolve_extra_verified

    for path in resolve_extra_verified(config, workdir):
        table = apply_extra_verified(table, path)
    logging.info("Dataset %s (%s): %s", root, data_format, table.summary())
    if steps:
        check_for_steps(table, config, steps, data_format=data_format, root=root)
    return table


def _detect_format(root: str, configured: str, demo: str) -> str:
    """The layout of a user's dataset at `root` (a file: tsv), else `configured` if it is not the demo's."""
    if os.path.isfile(root):
        return "tsv"
    if os.path.isfile(os.path.join(root, "meta", "classes.txt")):
        return "food101n"
    if any(os.path.isfile(os.path.join(root, *sub, _CLOTHING1M_CLASSES)) for sub in ((), ("annotations",))):
        return "clothing1m"
    if configured != "food101n":
        return configured
    raise DatasetError(f"data.root {root} is not a demo dataset, nor a dataset in a layout this package reads "
                       f"(food101n: ROOT/meta/classes.txt; clothing1m: ROOT/{_CLOTHING1M_CLASSES}; tsv: the .tsv "
                       f"file itself). Point data.root at your dataset, or at a new or empty folder for the {demo!r} "
                       "demo data.")


def _verification_sources(data_format: str, root: str) -> tuple[str, str]:
    """Where the layout keeps its verified training and validation labels, in its own words."""
    if data_format == "food101n":
        return (f"{os.path.join(root, 'meta', 'verified_train.tsv')} (class/key.jpg<TAB>1 if the label is right, "
                "0 if wrong)", f"{os.path.join(root, 'meta', 'verified_val.tsv')} (class/key.jpg<TAB>1 or 0)")
    if data_format == "clothing1m":
        return (f"the images of {_CLOTHING1M_NOISY_TRAIN} or {_CLOTHING1M_CLEAN_LISTS[0]} under {root} with both a "
                f"noisy ({_CLOTHING1M_NOISY_KV}) and a clean ({_CLOTHING1M_CLEAN_KV}) label",
                f"the images of {_CLOTHING1M_CLEAN_LISTS[1]} under {root} with a noisy label in "
                f"{_CLOTHING1M_NOISY_KV}")
    return (f"{root}: rows with split=train (or no split) and a `verified` value (1 = label right, 0 = wrong)",
            f"{root}: rows with split=val and a `verified` value (1 = label right, 0 = wrong)")


def check_for_steps(table: LabelTable, config, steps: Sequence[str], *, data_format: str, root: str) -> None:
    """Checks now what the pipeline's `steps` will need of the data, so a run fails before training, not after.

    refs, train: every class has images in the noisy pool (train/val). train: verified training rows in
    classes that are not held out. verify: verified validation rows in such classes; cleannet.mode=stacked:
    of both kinds, and its calibration classes' verified rows of both kinds.

    Raises:
        DatasetError: what is missing, where the format keeps it, and what to add.
    """
    steps = set(steps)
    pool = table.split != SPLIT_TEST
    held = table.heldout_classes[table.labels]
    n_held = int(table.heldout_classes.sum())
    held_note = (f" in classes that are not held out ({n_held} of {table.num_classes} classes are, by "
                 "data.heldout_list)") if n_held else ""
    train_source, val_source = _verification_sources(data_format, root)
    if steps & {"refs", "train"}:
        counts = np.bincount(table.labels[pool], minlength=table.num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            named = ", ".join(repr(table.class_names[i]) for i in empty[:_MAX_EXAMPLES])
            raise DatasetError(f"{root}: {len(empty)} class(es) have no training or validation image, only test "
                               f"rows: {named}. Every class needs images in the noisy pool: its reference set is "
                               "built from them.")
    if "train" in steps:
        verified_train = (table.verification >= 0) & (table.split == SPLIT_TRAIN) & ~held
        if not verified_train.any():
            raise DatasetError(f"No verified training rows{held_note}: CleanNet learns what a wrong label looks like "
                               f"from them. Add some: {train_source}.")
    if "verify" in steps:
        val = table.split == SPLIT_VAL
        if data_format == "tsv" and not val.any():
            raise DatasetError(f"{root} has no validation rows: add a `split` column with values train/val/test, or "
                               "mark verified rows with split=val (cleannet-verify chooses its threshold on verified "
                               "validation rows).")
        verified_val = val & (table.verification >= 0) & ~held
        if not verified_val.any():
            raise DatasetError(f"No verified validation rows{held_note}: cleannet-verify chooses its threshold on "
                               f"them. Add some: {val_source}.")
        if config.cleannet.mode == "stacked":
            kinds = table.verification[verified_val]
            n_right, n_wrong = int((kinds == 1).sum()), int((kinds == 0).sum())
            if not (n_right and n_wrong):
                raise DatasetError(f"cleannet.mode=stacked fits its score on verified validation rows of both kinds, "
                                   f"but they are {n_right} labelled right and {n_wrong} wrong ({val_source}): "
                                   "verify rows of both kinds, or set --config.cleannet.mode=robust.")
            if config.cleannet.calibration_fraction > 0:
                from cleannet_tf.train_lib import calibration_classes  # lazy: TensorFlow

                calibration = calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
                fit = pool & (table.verification >= 0) & calibration[table.labels]
                if calibration.any() and len(np.unique(table.verification[fit])) < 2:
                    raise DatasetError(
                        f"cleannet.calibration_fraction={config.cleannet.calibration_fraction}: the "
                        f"{int(calibration.sum())} calibration classes' verified rows are all of one kind (label "
                        "right, or wrong): raise cleannet.calibration_fraction, verify rows of both kinds, or set "
                        "it to 0.")


def load_precomputed_features(npz_path: str, table: LabelTable) -> tuple[np.ndarray, np.ndarray]:
    """Reads `data.features`: an .npz with `keys` (M,) str and `features` (M, D), aligned to the table.

    Every noisy-pool row (train/val) needs its key in the file; test rows may be absent (detection never uses
    them). Extra keys are ignored (and logged).

    Returns:
        features (N, D) float32, row i = features of `table.keys[i]` (zeros where absent), and valid (N,) bool,
        False for the absent test rows.
    """
    _require_file(npz_path, "an .npz with arrays 'keys' (N,) and 'features' (N, D)")
    from cleannet_tf.feature_store import CorruptFileError, load_npz

    try:
        npz = load_npz(npz_path, fix="Check data.features: write it with np.savez(path, keys=..., features=...).")
    except CorruptFileError as error:
        raise DatasetError(str(error)) from error
    arrays = {name: npz[name] for name in ("keys", "features") if name in npz}
    names_in_file = list(npz)
    absent = [name for name in ("keys", "features") if name not in arrays]
    if absent:
        raise DatasetError(f"{npz_path}: lacks array(s) {', '.join(absent)}; has {names_in_file}.")
    file_keys, features = arrays["keys"], arrays["features"]
    if file_keys.dtype.kind == "S":
        file_keys = np.char.decode(file_keys, "utf-8")
    if file_keys.ndim != 1 or file_keys.dtype.kind != "U":
        raise DatasetError(f"{npz_path}: 'keys' must be a 1-D array of strings; got shape {file_keys.shape}, "
                           f"dtype {file_keys.dtype}.")
    if features.ndim != 2:
        raise DatasetError(f"{npz_path}: 'features' must be 2-D (N, D); got shape {features.shape}.")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise DatasetError(f"{npz_path}: 'features' must be numeric; got dtype {features.dtype}.")
    if len(features) != len(file_keys):
        raise DatasetError(f"{npz_path}: {len(file_keys)} keys but {len(features)} feature rows.")

    order = np.argsort(file_keys, kind="stable")
    sorted_keys = file_keys[order]
    duplicated = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if len(duplicated):
        raise DatasetError(f"{npz_path}: {len(duplicated)} duplicate key(s), e.g. {str(duplicated[0])!r}.")
    position = np.searchsorted(sorted_keys, table.keys)
    position = np.minimum(position, max(len(sorted_keys) - 1, 0))
    found = (sorted_keys[position] == table.keys) if len(sorted_keys) else np.zeros(len(table), dtype=bool)
    pool = table.split != SPLIT_TEST
    if not found[pool].all():
        missing_keys = table.keys[pool & ~found]
        raise DatasetError(f"{npz_path}: {len(missing_keys)} of the dataset's {int(pool.sum())} train/val keys have "
                           f"no features, e.g. {[str(k) for k in missing_keys[:_MAX_EXAMPLES]]}.")
    aligned = np.zeros((len(table), features.shape[1]), dtype=np.float32)
    rows = order[position]
    block = 65536
    for start in range(0, len(table), block):  # bounded temporaries on 1M rows
        chunk_found = found[start:start + block]
        chunk = features[rows[start:start + block][chunk_found]].astype(np.float32)
        bad = ~np.isfinite(chunk).all(axis=1)
        if bad.any():
            first_bad = start + int(np.flatnonzero(chunk_found)[np.argmax(bad)])
            raise DatasetError(f"{npz_path}: features of key {str(table.keys[first_bad])!r} contain NaN or Inf.")
        aligned[start:start + block][chunk_found] = chunk
    n_extra = len(file_keys) - int(found.sum())
    if n_extra:
        logging.info("%s: %d keys not in the dataset ignored.", npz_path, n_extra)
    n_absent_test = int((~found).sum())
    if n_absent_test:
        logging.info("%s: %d test rows have no features (not needed: detection uses the train/val rows).",
                     npz_path, n_absent_test)
    logging.info("Loaded precomputed features %s from %s.", aligned.shape, npz_path)
    return aligned, found
