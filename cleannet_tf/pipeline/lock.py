"""One process at a time per workdir: an exclusive lock on WORKDIR/.lock, held for a whole command.

The lock file names its holder (pid, command, start time); a second command on the same workdir stops with
WorkdirBusyError naming them. The kernel releases the lock when its holder exits, killed or not. Taking the lock
also removes the temporary files of killed runs (atomic_io.clean_litter).

Imports `atomic_io`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator

from absl import logging

from cleannet_tf import atomic_io

LOCK_FILE = ".lock"
_OLD_CONFIG_TEMP = re.compile(r"config\..+\.json\.tmp")  # c90b6d9's fixed temporary name of config.<step>.json

# realpath -> [file descriptor, depth]: the locks this process holds (re-entrant).
_held: dict[str, list[int]] = {}


class WorkdirBusyError(RuntimeError):
    """Another process holds the workdir's lock."""


def _holder(fd: int) -> dict:
    for _ in range(20):  # the holder writes its name right after taking the lock
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if text:
            with contextlib.suppress(ValueError):
                return json.loads(text)
        time.sleep(0.05)
    return {}


def acquire(workdir: str, command: str) -> None:
    """Takes WORKDIR/.lock for this process (again if it holds it already), then cleans temp litter.

    Raises:
        WorkdirBusyError: "WORKDIR is in use by pid N (COMMAND) since TIME; ..."
    """
    key = os.path.realpath(workdir)
    if key in _held:
        _held[key][1] += 1
        return
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise WorkdirBusyError(
            f"{workdir} is in use by pid {holder.get('pid', '?')} ({holder.get('command', 'unknown command')}) "
            f"since {holder.get('since', '?')}; wait for it to end, or use another --workdir.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps({"pid": os.getpid(), "command": command,
                               "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n").encode(), 0)
    _held[key] = [fd, 1]
    atomic_io.clean_litter(workdir)
    for name in os.listdir(workdir):
        if _OLD_CONFIG_TEMP.fullmatch(name):
            os.remove(os.path.join(workdir, name))
            logging.info("Removed %s (left by a killed run).", os.path.join(workdir, name))


def release(workdir: str) -> None:
    """Undoes one acquire(); the lock goes with the last."""
    key = os.path.realpath(workdir)
    entry = _held[key]
    entry[1] -= 1
    if entry[1] == 0:
        del _held[key]
        os.ftruncate(entry[0], 0)
        os.close(entry[0])


def holds(workdir: str) -> bool:
    """Whether this process holds the workdir's lock."""
    return os.path.realpath(workdir) in _held


@contextlib.contextmanager
def locked(workdir: str, command: str) -> Iterator[None]:
    """Holds the workdir's lock for the `with` block."""
    acquire(workdir, command)
    try:
        yield
    finally:
        release(workdir)
