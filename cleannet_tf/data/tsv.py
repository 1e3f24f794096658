"""The generic table readers: TSV and CSV files of (path, label[, verified][, split]) into a LabelTable.

Both read the same columns; TSV splits lines on tabs, CSV is comma-separated with quoting as Python's csv
module reads it (the "excel" dialect, strict: an unclosed quote is an error). Imports `data.reading`, `data.table`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence

from absl import logging

from cleannet_tf.data.reading import (
    DatasetError,
    find_missing_images,
    leaves_root,
    normalize_key,
    numbered_lines,
    raise_if_missing,
    read_text,
    require_file,
    tab_fields,
    where,
)
from cleannet_tf.data.table import SPLIT_TEST, SPLIT_TRAIN, SPLITS, UNKNOWN, LabelTable, make_table

__all__ = ["read_csv", "read_tsv"]

_TSV_REQUIRED = ("path", "label")



_TSV_OPTIONAL = ("verified", "split")



_VERIFIED_VALUES = {"1": 1, "0": 0, "": UNKNOWN, "-1": UNKNOWN}



def read_tsv(path: str, *, check_images: bool = True, class_names: Sequence[str] | None = None) -> LabelTable:
    """Reads one tab-separated file with a header naming its columns (any order).

    Columns: `path` (relative to the file's folder, without `..` past it, or absolute), `label` (a class
    name), optional `verified` (1, 0, or empty / -1 = not verified) and `split`
    (train, val or test; default train). Other columns are ignored. Fields are stripped of surrounding white
    space. Key = `path` in its one spelling (`normalize_key`: `./a/x.jpg` and `a//x.jpg` are `a/x.jpg`, and
    one file listed twice is an error).

    Args:
        path: the .tsv file.
        check_images: check that every listed image exists.
        class_names: the classes in id order; default: the sorted label names found.

    Returns:
        The table: N = data lines.
    """
    path = os.path.abspath(os.path.expanduser(path))
    require_file(path, "a .tsv file with columns path, label[, verified, split]")
    rows = [(lineno, tab_fields(line)) for lineno, line in numbered_lines(path)]
    return _read_rows(path, rows, "tab", check_images=check_images, class_names=class_names)



def read_csv(path: str, *, check_images: bool = True, class_names: Sequence[str] | None = None) -> LabelTable:
    """Reads one comma-separated file with the columns of `read_tsv` (quoting as Python's csv module reads it).

    Strict quoting (an unclosed quote is an error); a quoted field may hold commas, and line breaks in the
    columns this reader ignores; a row's line is the line it starts on. Same arguments and table as `read_tsv`.
    """
    path = os.path.abspath(os.path.expanduser(path))
    require_file(path, "a .csv file with columns path, label[, verified, split]")
    return _read_rows(path, _csv_rows(path), "comma", check_images=check_images, class_names=class_names)



def _csv_rows(path: str) -> list[tuple[int, list[str]]]:
    """(first line of the row, its stripped fields) for each row of a CSV file that is not blank."""
    reader = csv.reader(io.StringIO(read_text(path)), strict=True)
    rows = []
    next_lineno = 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as e:
            hint = " (an unclosed quote?)" if "unexpected end of data" in str(e) else ""
            raise DatasetError(f"{where(path, next_lineno)}: not readable as CSV: {e}{hint}.") from None
        if row is None:
            return rows
        fields = [field.strip() for field in row]
        if any(fields):
            rows.append((next_lineno, fields))
        next_lineno = reader.line_num + 1



def _read_rows(path: str, rows: list[tuple[int, list[str]]], separator: str, *, check_images: bool,
               class_names: Sequence[str] | None) -> LabelTable:
    """The table of a path/label file already split into (line, fields) rows, the first the header."""
    base = os.path.dirname(path)
    if not rows:
        raise DatasetError(f"{path}: empty file (expected a header with columns path, label[, verified, split]).")
    header_lineno, header = rows[0]
    columns: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in columns:
            raise DatasetError(f"{where(path, header_lineno)}: column {name!r} appears twice in the header.")
        columns[name] = i
    absent = [name for name in _TSV_REQUIRED if name not in columns]
    if absent:
        other = {"tab": ("comma", ",", "csv"), "comma": ("tab", "\t", "tsv")}[separator]
        hint = (f" The header has one column with {other[0]}s in it: is the file {other[0]}-separated? Then set "
                f"data.format={other[2]} (or auto with a .{other[2]} file)."
                if len(header) == 1 and other[1] in header[0] else "")
        raise DatasetError(f"{where(path, header_lineno)}: header lacks column(s) {', '.join(absent)}. "
                           f"Got {separator}-separated columns: {header}.{hint}")
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
    key_lines: dict[str, tuple[int, str]] = {}  # key -> (line, the path as written there)
    for lineno, fields in rows[1:]:
        at = where(path, lineno)
        if len(fields) > len(header):
            raise DatasetError(f"{at}: {len(fields)} {separator}-separated fields but the header has {len(header)}.")
        fields += [""] * (len(header) - len(fields))  # trailing empty optional fields may be cut
        written, label_name = fields[path_col], fields[label_col]
        if not written or not label_name:
            raise DatasetError(f"{at}: empty {'path' if not written else 'label'}.")
        if "\n" in label_name or "\t" in label_name:
            raise DatasetError(f"{at}: label {label_name!r} holds a tab or a line break.")
        if not os.path.isabs(written) and leaves_root(written):
            raise DatasetError(f"{at}: path {written!r} leaves the file's folder {base} through '..'; write paths "
                               "inside that folder, or an absolute path.")
        key = normalize_key(written, at, base, allow_absolute=True)
        if key in key_lines:
            first_lineno, first_written = key_lines[key]
            same = "" if first_written == written else f", written {first_written!r}: the same file"
            raise DatasetError(f"{at}: duplicate path {written!r} (also on line {first_lineno}{same}).")
        split_name = fields[split_col] if split_col is not None else ""
        if split_name not in SPLITS and split_name != "":
            raise DatasetError(f"{at}: split must be train, val or test. Got: {split_name!r}.")
        row_split = SPLITS.index(split_name) if split_name else SPLIT_TRAIN
        verified_text = fields[verified_col] if verified_col is not None else ""
        if verified_text not in _VERIFIED_VALUES:
            raise DatasetError(f"{at}: verified must be 1, 0 or empty. Got: {verified_text!r}.")
        value = _VERIFIED_VALUES[verified_text]
        if row_split == SPLIT_TEST and value != UNKNOWN:
            raise DatasetError(f"{at}: a test row's label is ground truth; its verified field must be empty. "
                               f"Got: {verified_text!r}.")
        key_lines[key] = (lineno, written)
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
            raise DatasetError(f"{where(path, lineno)}: unknown class {name!r} (not among the "
                               f"{len(class_names)} class_names given).")
        labels.append(class_index[name])
    unused = set(class_names) - set(label_names)
    if unused:
        logging.warning("%s: %d of the given classes have no row, e.g. %s.", path, len(unused), sorted(unused)[:5])
    paths = [os.path.normpath(os.path.join(base, key)) for key in keys]  # join keeps absolute keys as they are
    if check_images:
        raise_if_missing(find_missing_images(paths, linenos, path))
    return make_table(keys, paths, class_names, labels, verification, split, {})
