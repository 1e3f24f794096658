"""Runs `cleannet-run` (argv: its flags) with its write boundaries counted, and killed at one of them.

    python tests/kill_boundaries.py EVENTS_FILE KILL --workdir=... --config=... ...

Boundaries (in the order one run meets them), each appended to EVENTS_FILE as "<kind> <path under WORKDIR>":
    write    an output's temporary file or folder is complete, not yet renamed (os.replace, atomic_io.publish_dir)
    checkpoint  a training checkpoint was just saved (tf.train.CheckpointManager.save returned)
    record   the step's DONE record is about to be written (records._write_record)
KILL: a boundary ("checkpoint cleannet/checkpoints/ckpt-20"; temporary names as "<name>.tmp", see `label`): at
its first occurrence the process ends with os._exit(137), as a SIGKILL does (no finally block, no flush, no
atexit); "fill:<boundary>": there the file system of WORKDIR is filled up (a real full disk for every write after
it); "-": counts only.
"""

import os
import re
import sys


def label(line: str) -> str:
    """A boundary without the temporary name's pid and token: "write verify.tmp/report.html"."""
    return re.sub(r"\.tmp-[^/ ]+", ".tmp", line.strip())


def _fill(workdir: str) -> None:
    """Writes WORKDIR/filler until its file system has no space left."""
    with open(os.path.join(workdir, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    with open(os.path.join(workdir, "filler"), "ab", buffering=0) as f:  # the last blocks a smaller write fits in
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def _install(events_path: str, kill: str, workdir: str) -> None:
    import tensorflow as tf

    from cleannet_tf import atomic_io
    from cleannet_tf.pipeline import records

    def boundary(kind: str, path: str) -> None:
        line = f"{kind} {os.path.relpath(path, workdir)}"
        with open(events_path, "a") as f:
            f.write(line + "\n")
        if label(line) == kill:
            os._exit(137)
        if f"fill:{label(line)}" == kill:
            _fill(workdir)

    def under_workdir(path) -> bool:
        return os.path.abspath(os.fsdecode(path)).startswith(workdir + os.sep)

    real_replace, real_publish = os.replace, atomic_io.publish_dir
    real_save, real_write_record = tf.train.CheckpointManager.save, records._write_record

    def replace(source, target, *args, **kwargs):
        if under_workdir(target):
            boundary("write", os.fsdecode(target))
        return real_replace(source, target, *args, **kwargs)

    def publish_dir(tmp, path):
        if under_workdir(path):
            boundary("write", path)
        return real_publish(tmp, path)

    def save(self, *args, **kwargs):
        result = real_save(self, *args, **kwargs)
        boundary("checkpoint", result)
        return result

    def write_record(name, config, workdir_, **kwargs):
        boundary("record", os.path.join(workdir, "done", f"{name}.json"))
        return real_write_record(name, config, workdir_, **kwargs)

    os.replace, atomic_io.publish_dir = replace, publish_dir
    tf.train.CheckpointManager.save, records._write_record = save, write_record


if __name__ == "__main__":
    events_path, kill, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
    workdir = os.path.abspath(next(flag.split("=", 1)[1] for flag in flags if flag.startswith("--workdir=")))
    _install(events_path, kill, workdir)
    from cleannet_tf.cli import run

    sys.argv = ["cleannet-run", *flags]
    run.run()
