"""The Food-101N reader (meta/classes.txt, verified_train.tsv, verified_val.tsv) into a LabelTable.

Imports `data.reading`, `data.table`.
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from cleannet_tf.data.reading import (
    MAX_EXAMPLES,
    DatasetError,
    add_skipped,
    check_no_empty_class,
    check_unique_names,
    find_missing_images,
    normalize_key,
    numbered_lines,
    raise_if_missing,
    require_file,
    tab_fields,
    where,
)
from cleannet_tf.data.table import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VAL,
    SPLITS,
    UNKNOWN,
    LabelTable,
    apply_heldout,
    make_table,
    read_heldout_list,
)


def apply_extra_verified(table: LabelTable, path: str, *, split: str = "train") -> LabelTable:
    """A new table with the verification labels of `path` (verified_train.tsv format) on its training rows.

    They replace the table's own labels of those rows; keys not in the table are counted in `skipped`.
    split "train": a validation or test row raises DatasetError (naming the file and line).
    split "val" (a verified_val.tsv): the rows become verified validation rows (a test row raises).
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val. Received {split!r}")
    skipped = dict(table.skipped)
    rows = {key: row for row, key in enumerate(table.keys)}
    verification = table.verification.copy()
    splits = table.split.copy()
    allowed = (SPLIT_TRAIN,) if split == "train" else (SPLIT_TRAIN, SPLIT_VAL)
    for key, (value, lineno) in _read_food101n_verified(require_file(path, "verification labels"), rows,
                                                        skipped).items():
        if table.split[rows[key]] not in allowed:
            raise DatasetError(f"{where(path, lineno)}: {key!r} is a {SPLITS[table.split[rows[key]]]} row; extra "
                               f"verification labels go to {' or '.join(SPLITS[s] for s in allowed)} rows only.")
        verification[rows[key]] = value
        if split == "val":
            splits[rows[key]] = SPLIT_VAL
    return dataclasses.replace(table, verification=verification, split=splits, skipped=skipped)



def _read_food101n_classes(path: str) -> tuple[list[str], list[int]]:
    names, linenos = [], []
    for lineno, line in numbered_lines(path):
        name = line.strip()
        if not names and name == "class_name":
            continue  # header
        names.append(name)
        linenos.append(lineno)
    if not names:
        raise DatasetError(f"{path}: no classes listed.")
    check_unique_names(names, linenos, path)
    return names, linenos



def _read_food101n_verified(path: str, key_to_row: dict[str, int], skipped: dict[str, int],
                            images_dir: str = "the dataset's images folder") -> dict[str, tuple[int, int]]:
    """Returns key -> (verification label, line). Keys absent from imagelist.tsv are counted, not fatal."""
    verified: dict[str, tuple[int, int]] = {}
    absent = []
    first = True
    for lineno, line in numbered_lines(path):
        fields = tab_fields(line)
        is_first, first = first, False
        if len(fields) < 2 or fields[1] not in ("0", "1"):
            if is_first:
                continue  # header, e.g. "class_name/key<TAB>verification_label"
            if len(fields) < 2:
                raise DatasetError(f"{where(path, lineno)}: expected 'class/key.jpg<TAB>0|1'. Got: {line.strip()!r}.")
            raise DatasetError(f"{where(path, lineno)}: verification label must be 0 or 1. Got: {fields[1]!r}.")
        key = normalize_key(fields[0], where(path, lineno), images_dir)
        if key in verified:
            raise DatasetError(f"{where(path, lineno)}: duplicate key {key!r} (also on line {verified[key][1]}).")
        if key not in key_to_row:
            absent.append(lineno)
            if len(absent) <= MAX_EXAMPLES:
                logging.warning("%s: verified key %r is not in meta/imagelist.tsv; row skipped.", where(path, lineno),
                                key)
            continue
        verified[key] = (int(fields[1]), lineno)
    add_skipped(skipped, f"{os.path.basename(path)} rows whose key is not in imagelist.tsv", len(absent))
    return verified



def _first_part(key: str, at: str, root: str) -> str:
    """The class part of a key that may be a header line ("" when it is no key)."""
    try:
        return normalize_key(key, at, root).partition("/")[0]
    except DatasetError:
        return ""



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
    classes_path = require_file(os.path.join(meta, "classes.txt"), "the Food-101N class list")
    imagelist_path = require_file(os.path.join(meta, "imagelist.tsv"), "the Food-101N image list")
    verified_paths = [require_file(os.path.join(meta, f"verified_{name}.tsv"), f"the Food-101N verified_{name} list")
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
    for lineno, line in numbered_lines(imagelist_path):
        key = tab_fields(line)[0]
        at = where(imagelist_path, lineno)
        is_first, first = first, False
        if is_first and _first_part(key, at, images_dir) not in class_index:
            logging.info("%s: line %d taken as the header: %r", imagelist_path, lineno, line.strip())
            continue
        key = normalize_key(key, at, images_dir)
        class_name, _, name = key.partition("/")
        if not name:
            raise DatasetError(f"{at}: expected 'class/key.jpg'. Got: {key!r}.")
        if class_name not in class_index:
            raise DatasetError(f"{where(imagelist_path, lineno)}: unknown class {class_name!r} "
                               f"(not in {classes_path}).")
        if key in key_to_row:
            raise DatasetError(f"{where(imagelist_path, lineno)}: duplicate key {key!r} "
                               f"(also on line {linenos[key_to_row[key]]}).")
        key_to_row[key] = len(keys)
        keys.append(key)
        labels.append(class_index[class_name])
        linenos.append(lineno)
    check_no_empty_class(labels, class_names, classes_path, class_linenos, imagelist_path)

    images_prefix = os.path.join(images_dir, "")  # string concatenation: os.path.join is slow on 1M rows
    paths = [images_prefix + key for key in keys]
    verification = [UNKNOWN] * len(keys)
    split = [SPLIT_TRAIN] * len(keys)
    train_path, val_path = verified_paths
    verified_train = _read_food101n_verified(train_path, key_to_row, skipped, images_dir)
    verified_val = _read_food101n_verified(val_path, key_to_row, skipped, images_dir)
    for key, (value, lineno) in verified_val.items():
        if key in verified_train:
            raise DatasetError(f"{where(val_path, lineno)}: key {key!r} is in both verified lists "
                               f"(also {where(train_path, verified_train[key][1])}).")
        row = key_to_row[key]
        verification[row] = value
        split[row] = SPLIT_VAL
    for key, (value, _) in verified_train.items():
        verification[key_to_row[key]] = value
    missing = find_missing_images(paths, linenos, imagelist_path) if check_images else []

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
        for lineno, line in numbered_lines(test_list):
            name = normalize_key(line.strip(), where(test_list, lineno), test_dir)
            class_name, _, image = name.partition("/")
            if not image:
                raise DatasetError(f"{where(test_list, lineno)}: expected 'class/key'. Got: {name!r}.")
            if class_name not in class_index:
                raise DatasetError(f"{where(test_list, lineno)}: unknown class {class_name!r} "
                                   f"(not in {classes_path}).")
            key = f"test/{name}"
            if key in test_keys_on:
                raise DatasetError(f"{where(test_list, lineno)}: duplicate key {name!r} "
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
            missing += find_missing_images(test_paths, test_linenos, test_list)
    raise_if_missing(missing)

    table = make_table(keys, paths, class_names, labels, verification, split, skipped)
    if heldout_list:
        table = apply_heldout(table, read_heldout_list(heldout_list, class_names))
    return table
