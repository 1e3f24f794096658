"""Quiet start-up for the commands: runs before TensorFlow is first imported (from cleannet_tf/cli/__init__.py).

When the process is one of the console scripts (`cleannet-*`) or `python -m cleannet_tf.cli.<step>`, and the
user asked for no verbosity (`--verbosity=1`, `-v 1`, `--debug`):
- TF_CPP_MIN_LOG_LEVEL=2 unless the user set it (3 on machines without an NVIDIA device, which hides the
  CUDA init error), and
- TensorFlow's start-up lines written before its logging starts (oneDNN, "Could not find cuda drivers") are
  held back while TensorFlow is imported; `finish_import` prints them only when the import failed.
Library users (`import cleannet_tf`) are left alone.
"""

from __future__ import annotations

import os
import sys
import tempfile

_held: tuple[int, object] | None = None  # (saved stderr fd, temporary file) while TensorFlow is imported


def launched_as_command(orig_argv: list[str] | None = None) -> bool:
    """Whether this process runs a cleannet_tf console script or `python -m cleannet_tf.cli.<step>`."""
    argv = list(getattr(sys, "orig_argv", sys.argv) if orig_argv is None else orig_argv)
    if any(os.path.basename(arg).startswith("cleannet-") for arg in argv[:2]):
        return True
    return any(arg == "-m" and nxt.startswith("cleannet_tf.") for arg, nxt in zip(argv, argv[1:], strict=False))


def verbose_requested(argv: list[str]) -> bool:
    """--debug, or an absl verbosity of 1 or more (`--verbosity=N`, `--verbosity N`, `-v N`, `-vN`)."""
    for i, arg in enumerate(argv):
        if arg in ("--debug", "--debug=true", "--debug=True", "--debug=1"):
            return True
        value = None
        if arg.startswith("--verbosity="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-v=") or (arg.startswith("-v") and arg[2:].lstrip("-").isdigit()):
            value = arg[2:].lstrip("=")
        elif arg in ("--verbosity", "-v") and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            try:
                if int(value) >= 1:
                    return True
            except ValueError:
                pass
    return False


def quiet_tensorflow_startup() -> None:
    """Sets TF_CPP_MIN_LOG_LEVEL and holds back fd 2 until `finish_import` (commands only; see the docstring)."""
    global _held
    if _held is not None or not launched_as_command() or verbose_requested(sys.argv[1:]):
        return
    if "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        has_gpu = any(name.startswith("nvidia") for name in (os.listdir("/dev") if os.path.isdir("/dev") else []))
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if has_gpu else "3"
    try:
        sys.stderr.flush()
        held_file = tempfile.TemporaryFile()
        saved = os.dup(2)
        os.dup2(held_file.fileno(), 2)
    except OSError:
        return
    _held = (saved, held_file)


def finish_import(failed: bool) -> None:
    """Restores stderr after TensorFlow's import; replays what it held back if the import failed."""
    global _held
    if _held is None:
        return
    saved, held_file = _held
    _held = None
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    if failed:
        held_file.seek(0)
        sys.stderr.write(held_file.read().decode("utf-8", "replace"))
    held_file.close()
