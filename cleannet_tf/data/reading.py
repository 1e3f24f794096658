"""What every dataset reader shares: DatasetError, reading text files by numbered line, dataset keys, checks.

Bad input raises `DatasetError` naming the file and the 1-based line (the header, when there is one, is line 1).
Rows left out of a table are counted by `add_skipped` (and logged): nothing is dropped silently. Imports nothing
of the package; `data.table` re-exports `DatasetError`.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

import numpy as np
from absl import logging

__all__ = ["MAX_EXAMPLES", "DatasetError", "add_skipped", "check_inside_root", "check_no_empty_class",
           "check_unique_names", "find_missing_images", "leaves_root", "normalize_key", "numbered_lines",
           "raise_if_missing", "read_text", "require_file", "tab_fields", "where"]

MAX_EXAMPLES = 5  # examples named in error and warning messages



class DatasetError(ValueError):
    """Bad dataset input; the message names the file and line."""



def where(path: str, lineno: int) -> str:
    """"PATH, line N": how every message names a place in an input file."""
    return f"{path}, line {lineno}"



def require_file(path: str, what: str) -> str:
    """Returns `path`; raises DatasetError saying `what` was expected there when it is not a file."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: file not found (expected {what} there).")
    return path



def read_text(path: str) -> str:
    """The file's text: UTF-8 (a byte-order mark dropped), line endings turned into "\\n".

    Raises:
        DatasetError: naming the line of the first byte that is not UTF-8 (UTF-16 files are named as such).
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{where(path, 1)}: UTF-16 text (it starts with a UTF-16 byte-order mark); save the file "
                           "as UTF-8.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data[:e.start].count(b"\n") + 1
        raise DatasetError(f"{where(path, lineno)}: not UTF-8 text (byte {data[e.start:e.start + 1]!r} cannot be "
                           "decoded): save the file as UTF-8.") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")



def numbered_lines(path: str) -> list[tuple[int, str]]:
    """Returns (1-based line number, line without its line ending) for each non-blank line of a UTF-8 file."""
    return [(lineno, line) for lineno, line in enumerate(read_text(path).split("\n"), 1) if line.strip()]



def tab_fields(line: str) -> list[str]:
    """The tab-separated fields of a line, each stripped of surrounding white space."""
    return [field.strip() for field in line.split("\t")]



def leaves_root(key: str) -> bool:
    """Whether a relative dataset key names a file outside its root (absolute, or `..` past the top)."""
    if not key.startswith(("/", "\\")) and ".." not in key and not (len(key) > 1 and key[1] == ":"):
        return False  # the fast path for the usual key
    normalized = os.path.normpath(key)
    return os.path.isabs(key) or normalized == os.pardir or normalized.startswith(os.pardir + os.sep)



def check_inside_root(key: str, at: str, root: str) -> None:
    """Raises DatasetError (at `at`, e.g. `where(file, line)`) when `key` leaves `root`."""
    if leaves_root(key):
        raise DatasetError(f"{at}: key {key!r} leaves the dataset root {root} (an absolute path or '..' past "
                           "it); keys are paths inside the root (symbolic links inside it are fine).")



def normalize_key(key: str, at: str, root: str, *, allow_absolute: bool = False) -> str:
    """The one spelling of a dataset key: `./a/x.jpg`, `a//x.jpg` and `a/b/../x.jpg` are all `a/x.jpg`.

    POSIX normpath (only when the key has something to normalise: the usual key is returned as it is).
    Raises DatasetError (at `at`) when the key leaves `root`: `..` past the top, or an absolute path unless
    `allow_absolute`; an empty key, one that names the root itself ("." or "a/.."), or one with a tab or a
    line break.
    """
    if not key:
        raise DatasetError(f"{at}: empty key.")
    if "\t" in key or "\n" in key or "\r" in key:
        raise DatasetError(f"{at}: key {key!r} holds a tab or a line break (keys are written to .tsv files).")
    if leaves_root(key) and not (allow_absolute and os.path.isabs(key)):
        check_inside_root(key, at, root)
    if "//" in key or "/." in key or key.startswith(".") or key.endswith("/"):
        normalized = posixpath.normpath(key)
        if normalized.startswith("//"):  # POSIX normpath keeps a leading "//"; one slash names the same file
            normalized = normalized[1:]
        if normalized in (".", "/"):
            raise DatasetError(f"{at}: key {key!r} names the dataset root {root} itself, not an image.")
        return normalized
    return key



def check_unique_names(names: Sequence[str], linenos: Sequence[int], path: str) -> None:
    """Raises DatasetError naming both lines of the first class listed twice."""
    first_line: dict[str, int] = {}
    for name, lineno in zip(names, linenos, strict=True):
        if name in first_line:
            raise DatasetError(f"{where(path, lineno)}: duplicate class {name!r} (also on line {first_line[name]}).")
        first_line[name] = lineno



def find_missing_images(paths: Sequence[str], linenos: Sequence[int], list_file: str) -> list[str]:
    """Returns "path (file, line N)" for each path not on disk; one os.path.exists per path."""
    exists = os.path.exists
    return [f"{path} ({where(list_file, lineno)})"
            for path, lineno in zip(paths, linenos, strict=True) if not exists(path)]



def raise_if_missing(missing: list[str]) -> None:
    """Raises one DatasetError for the images `find_missing_images` found missing (the first few named)."""
    if missing:
        examples = "; ".join(missing[:MAX_EXAMPLES])
        n_shown = min(len(missing), MAX_EXAMPLES)
        raise DatasetError(f"{len(missing)} listed image(s) not found on disk. First {n_shown}: {examples}. "
                           "Fix the list or the images, or set data.check_images=False to skip this check.")



def add_skipped(skipped: dict[str, int], reason: str, count: int) -> None:
    """Counts `count` input rows left out of the table under `reason` (in place) and logs them."""
    if count:
        skipped[reason] = skipped.get(reason, 0) + count
        logging.warning("Skipped %d input row(s): %s.", count, reason)



def check_no_empty_class(labels: Sequence[int], class_names: Sequence[str], class_file: str,
                         class_linenos: Sequence[int], where_rows: str) -> None:
    """Raises DatasetError naming the classes (and their lines in `class_file`) with no row in `labels`."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_names))
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        named = ", ".join(f"{class_names[i]!r} ({where(class_file, class_linenos[i])})"
                          for i in empty[:MAX_EXAMPLES])
        raise DatasetError(f"{len(empty)} class(es) have no image in {where_rows}: {named}.")
