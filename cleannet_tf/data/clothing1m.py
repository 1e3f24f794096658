"""The Clothing1M reader (noisy/clean label kv files and key lists) into a LabelTable.

Imports `data.reading`, `data.table`.
"""

from __future__ import annotations

import os

from absl import logging

from cleannet_tf.data.reading import (
    DatasetError,
    add_skipped,
    check_inside_root,
    check_no_empty_class,
    check_unique_names,
    leaves_root,
    numbered_lines,
    raise_if_missing,
    where,
)
from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, SPLIT_VAL, UNKNOWN, LabelTable, make_table

CLOTHING1M_CLASSES = "category_names_eng.txt"



CLOTHING1M_NOISY_KV = "noisy_label_kv.txt"



CLOTHING1M_CLEAN_KV = "clean_label_kv.txt"



CLOTHING1M_NOISY_TRAIN = "noisy_train_key_list.txt"



CLOTHING1M_CLEAN_LISTS = ("clean_train_key_list.txt", "clean_val_key_list.txt", "clean_test_key_list.txt")



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
    numbered = numbered_lines(path)
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
            raise DatasetError(f"{where(path, lineno)}: expected 'key label' (e.g. 'images/0/00/1.jpg 4'). "
                               f"Got: {line.strip()!r}.")
        key, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise DatasetError(f"{where(path, lineno)}: label must be an integer. Got: {label_text!r}.") from None
        if not 0 <= label < num_classes:
            raise DatasetError(f"{where(path, lineno)}: label {label} out of range [0, {num_classes}).")
        if key in labels:
            raise DatasetError(f"{where(path, lineno)}: duplicate key {key!r} (also on line {label_lines[key]}).")
        labels[key] = label
        label_lines[key] = lineno
    return labels



def _read_key_list(path: str, labels: dict[str, int], kv_path: str, root: str) -> dict[str, int]:
    """Reads one key per line. Returns key -> line, in file order; every key must have a label and be in root."""
    numbered = numbered_lines(path)
    key_lines = {line.strip(): lineno for lineno, line in numbered}
    if (len(key_lines) == len(numbered) and key_lines.keys() <= labels.keys()
            and not any(map(leaves_root, key_lines))):
        return key_lines  # fast path; otherwise find the first bad line
    key_lines = {}
    for lineno, line in numbered:
        key = line.strip()
        check_inside_root(key, where(path, lineno), root)
        if key in key_lines:
            raise DatasetError(f"{where(path, lineno)}: duplicate key {key!r} (also on line {key_lines[key]}).")
        if key not in labels:
            raise DatasetError(f"{where(path, lineno)}: key {key!r} has no label in {kv_path}.")
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
    classes_path = _clothing1m_file(root, CLOTHING1M_CLASSES)
    class_names, class_linenos = [], []
    for lineno, line in numbered_lines(classes_path):
        class_names.append(line.strip())
        class_linenos.append(lineno)
    if not class_names:
        raise DatasetError(f"{classes_path}: no classes listed.")
    check_unique_names(class_names, class_linenos, classes_path)
    num_classes = len(class_names)

    noisy_kv_path = _clothing1m_file(root, CLOTHING1M_NOISY_KV)
    clean_kv_path = _clothing1m_file(root, CLOTHING1M_CLEAN_KV)
    noisy = _read_label_kv(noisy_kv_path, num_classes)
    clean = _read_label_kv(clean_kv_path, num_classes)
    noisy_train_path = _clothing1m_file(root, CLOTHING1M_NOISY_TRAIN)
    noisy_train = _read_key_list(noisy_train_path, noisy, noisy_kv_path, root)
    clean_list_paths = [_clothing1m_file(root, name) for name in CLOTHING1M_CLEAN_LISTS]
    clean_lists = [_read_key_list(path, clean, clean_kv_path, root) for path in clean_list_paths]
    for i in range(3):
        for j in range(i + 1, 3):
            for key, lineno in clean_lists[j].items():
                if key in clean_lists[i]:
                    raise DatasetError(f"{where(clean_list_paths[j], lineno)}: key {key!r} is also in "
                                       f"{where(clean_list_paths[i], clean_lists[i][key])}; the clean splits must "
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
                missing.append(f"{root_prefix + key} ({where(list_path, lineno)})")
        name = os.path.basename(list_path)
        add_skipped(skipped, f"{name} keys also in {os.path.basename(clean_test_path)} (kept as test rows only)",
                     n_leaked)
        add_skipped(skipped, f"{name} keys without a noisy label in {os.path.basename(noisy_kv_path)}", n_no_noisy)

    add_rows(noisy_train, noisy_train_path, None)
    n_noisy_pool_start = len(keys)
    add_rows(clean_train, clean_train_path, SPLIT_TRAIN)
    add_rows(clean_val, clean_val_path, SPLIT_VAL)
    if len(keys) > n_noisy_pool_start:
        logging.info("Clothing1M: %d clean train/val images outside noisy_train_key_list.txt have a noisy label; "
                     "added as train/val rows.", len(keys) - n_noisy_pool_start)
    n_pool = len(keys)
    add_rows(clean_test, clean_test_path, SPLIT_TEST)
    raise_if_missing(missing)
    check_no_empty_class(labels[:n_pool], class_names, classes_path, class_linenos, "the noisy train/val rows")
    paths = [root_prefix + key for key in keys]
    return make_table(keys, paths, class_names, labels, verification, split, skipped)
