"""Outputs published whole: written under a per-process temporary name next to the target, then renamed.

    PATH.tmp-<host>-<pid>-<token>[.ext]   a file or folder being written (the extension is kept: .keras, .npy)
    PATH.old-<host>-<pid>-<token>         the previous folder, moved aside while a new one is swapped in

A reader (or a process killed at any moment) sees the old complete file or folder or the new complete one,
never a mix. A full disk raises DiskFullError naming the path (also NumPy's short write, "N requested and M
written", which has no errno; TensorFlow's "No space left on device"), and the temporary file is removed.
`clean_litter` removes what killed processes of this host left (their pid is dead) and puts back a folder a kill
left aside; another host's (a multi-host extraction on a shared workdir) only when older than LITTER_AGE.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any

from absl import logging

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# PATH.(tmp|old)-[<host>-]<pid>[-<token>] (ours; names of older versions have no host), then export/'s version
# folders .tmp-<version>-<pid>.
_TEMP_NAME = re.compile(r"\.(tmp|old)-(?:([A-Za-z0-9_-]+?)-(\d+)-[0-9a-f]{8}|(\d+)(?:-[0-9a-f]{8})?)(?=$|\.)")
_EXPORT_TEMP_NAME = re.compile(r"\.tmp-\d+-(\d+)")
_MULTI_EXTENSIONS = (".weights.h5",)
# A temporary file or folder of another host is litter only when untouched this long: whether its process lives
# cannot be told from here, and no write of this package takes a day.
LITTER_AGE = 24 * 3600.0


def host_name() -> str:
    """This host's name as temporary names carry it (letters, digits, '-' and '_')."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


class DiskFullError(OSError):
    """Writing PATH failed: no space left on device (or a file-size limit); nothing was left behind."""


def _split_extension(name: str) -> tuple[str, str]:
    for extension in _MULTI_EXTENSIONS:
        if name.endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)], extension
    return os.path.splitext(name)


def temp_path(path: str, kind: str = "tmp") -> str:
    """PATH.<kind>-<host>-<pid>-<token>[.ext]: a name no other process uses, in PATH's folder (so a rename is
    atomic). The host: processes of several hosts may write to one folder (a multi-host extraction), and a pid
    says nothing of another host's process (clean_litter)."""
    directory, name = os.path.split(os.path.abspath(path))
    root, extension = _split_extension(name)
    return os.path.join(directory, f"{root}.{kind}-{host_name()}-{os.getpid()}-{secrets.token_hex(4)}{extension}")


# NumPy's short write (np.save / tofile on a full disk or past a file-size limit) is an OSError without errno;
# TensorFlow's file system (checkpoints, SavedModels) says it in the message of its own errors.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")
_MESSAGES = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "File too large": errno.EFBIG}


def _no_space_errno(error: BaseException) -> int | None:
    """The errno of a full disk anywhere in `error`'s cause chain (libraries wrap OSError), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return error.errno
        if isinstance(error, OSError) and error.errno is None and _SHORT_WRITE.match(str(error)):
            return errno.ENOSPC
        if not isinstance(error, OSError):
            code = next((code for text, code in _MESSAGES.items() if text in str(error)), None)
            if code is not None:
                return code
        error = error.__cause__ or error.__context__
    return None


def remove_path(path: str) -> None:
    """Removes a file or folder tree if it exists."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(OSError):
            os.remove(path)


def _disk_full(code: int, path: str) -> DiskFullError:
    reason = "no space left on device" if code != errno.EFBIG else "no space left on device (file size limit reached)"
    return DiskFullError(code, f"Cannot write {path}: {reason}; free some space (or use another --workdir) and rerun")


def disk_full_error(error: BaseException, path: str) -> DiskFullError | None:
    """DiskFullError naming `path` when `error` is a full disk (see the module docstring), else None."""
    if isinstance(error, DiskFullError):
        return None
    code = _no_space_errno(error)
    return _disk_full(code, path) if code is not None else None


@contextlib.contextmanager
def naming_path(path: str) -> Iterator[None]:
    """A full disk inside becomes DiskFullError naming `path` (writers that do not go through atomic_path)."""
    try:
        yield
    except BaseException as error:
        full = disk_full_error(error, path)
        if full is not None:
            raise full from error
        raise


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path for a writer (a file, or a folder it creates); renamed to `path` on success.

    On any error the temporary file or folder is removed; a full disk becomes DiskFullError naming `path`.
    A folder replaces an existing `path` folder as publish_dir does.
    """
    tmp = temp_path(path)
    try:
        with naming_path(path):
            yield tmp
            if os.path.isdir(tmp):
                publish_dir(tmp, path)
            else:
                os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def write_bytes(path: str, data: bytes, *, sync_folder: bool = False) -> None:
    """`data` to `path` through a temporary name (flushed to disk before the rename).

    sync_folder: also flush the folder after the rename, so the new file survives a power loss (decisions).
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if sync_folder:
        folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def write_text(path: str, text: str, *, encoding: str = "utf-8", sync_folder: bool = False) -> None:
    """`text` to `path` through a temporary name (sync_folder: see write_bytes)."""
    write_bytes(path, text.encode(encoding), sync_folder=sync_folder)


def write_json(path: str, payload: Any, *, indent: int = 2, sort_keys: bool = False) -> None:
    """`payload` as JSON to `path` through a temporary name."""
    write_text(path, json.dumps(payload, indent=indent, sort_keys=sort_keys) + "\n")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swaps two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(code, f"Cannot swap {a} into {b}: {os.strerror(code)}")


def publish_dir(tmp: str, path: str) -> None:
    """Puts the complete folder `tmp` at `path`, replacing a previous `path` folder; then removes the old one.

    Where the kernel can swap the two in one step it does; otherwise the old folder is renamed aside
    (PATH.old-<pid>-<token>) and the new one renamed in: a kill between the two renames leaves the old one
    aside, which clean_litter puts back.
    """
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        remove_path(tmp)  # now the old folder
        return
    aside = temp_path(path, kind="old")
    os.rename(path, aside)
    os.rename(tmp, path)
    remove_path(aside)


@contextlib.contextmanager
def staging_dir(path: str) -> Iterator[str]:
    """Yields a new empty temporary folder beside `path`; on success it becomes `path` (publish_dir)."""
    with atomic_path(path) as tmp:
        os.makedirs(tmp)
        yield tmp


def temp_owner(name: str) -> tuple[str, str, int] | None:
    """("tmp" or "old", host, pid) when `name` is a temporary name of this package, else None (a name without a
    host, of an older version or an export's version folder, is this host's)."""
    match = _EXPORT_TEMP_NAME.fullmatch(name)
    if match:
        return "tmp", host_name(), int(match.group(1))
    match = _TEMP_NAME.search(name)
    if match:
        return match.group(1), match.group(2) or host_name(), int(match.group(3) or match.group(4))
    return None


def _abandoned(path: str, host: str, pid: int) -> bool:
    """Whether the process that wrote `path` is gone: this host's by its pid; another host's by the age of
    `path` (LITTER_AGE)."""
    if host == host_name():
        return not pid_alive(pid)
    try:
        return time.time() - os.lstat(path).st_mtime > LITTER_AGE
    except FileNotFoundError:
        return False


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_litter(root: str) -> list[str]:
    """Removes temporary files and folders under `root` whose process is dead; puts back folders left aside.

    Another host's temporary files (workers of a multi-host extraction write shards to a shared workdir without
    its lock) are left alone unless untouched for LITTER_AGE. Call it only while holding root's workdir lock.
    Returns the paths removed or restored.
    """
    cleaned = []
    for directory, folders, files in os.walk(root):
        for name in sorted(folders) + sorted(files):
            owner = temp_owner(name)
            path = os.path.join(directory, name)
            if owner is None or not _abandoned(path, owner[1], owner[2]):
                continue
            kind = owner[0]
            target = os.path.join(directory, name[: _TEMP_NAME.search(name).start()]) if kind == "old" else None
            if target and not os.path.lexists(target):
                os.rename(path, target)  # killed between the two renames of publish_dir: the old set goes back
                logging.warning("Restored %s (a killed process left it at %s).", target, path)
            else:
                remove_path(path)
            cleaned.append(path)
            if name in folders:
                folders.remove(name)
    if cleaned:
        logging.info("Removed or restored %d temporary file(s) of killed runs under %s.", len(cleaned), root)
    return cleaned
