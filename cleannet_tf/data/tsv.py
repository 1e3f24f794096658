"""The generic TSV reader (path, label[, verified][, split]) into a LabelTable.

Imports `data.table`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import logging

from cleannet_tf.data.table import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLITS,
    UNKNOWN,
    DatasetError,
    LabelTable,
    _find_missing_images,
    _leaves_root,
    _make_table,
    _numbered_lines,
    _raise_if_missing,
    _require_file,
    _tab_fields,
    _where,
)

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
