"""Flag plumbing and error reporting shared by the absl entry scripts (the library never reads flags).

Every pipeline command takes `--config=configs/<x>.py` (fields overridable as
`--config.section.field=value`; unknown fields are rejected; `cleannet-config --show`
lists every field with its comment and default) and `--workdir=DIR`.

Every command runs through `run`: an expected error (bad input, a missing or
corrupt file, a bad config field) prints one line, `<command>: error: <what, where,
what to do>`, and exits with status 1; the Python traceback only with --debug or
--verbosity=1.

Imports `atomic_io`, `config`, `pipeline`, `training`.
"""

from __future__ import annotations

import errno
import logging as std_logging
import os
import sys
import traceback
import zipfile
from collections.abc import Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cleannet_tf import atomic_io
from cleannet_tf import config as config_lib
from cleannet_tf.training import distribute

_CONFIG = config_flags.DEFINE_config_file(
    "config", config_lib.__file__, "An ml_collections config file, e.g. configs/demo.py (default: the schema's "
    "defaults, cleannet_tf/config/). Override any field as --config.section.field=value; "
    "`cleannet-config --show` lists every field with its comment and default.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder every step reads from and writes to (created if missing).")
_DEBUG = flags.DEFINE_boolean("debug", False, "Print the Python traceback of an error (as --verbosity=1 does).")

# Errors of input, files and config: one line for people. Anything else is a bug and keeps its traceback.
EXPECTED_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError)
_COMMON_FLAGS = ("config", "workdir", "debug", "verbosity")


def default_config_path(name: str) -> str | None:
    """configs/<name>.py of the source checkout this package runs from, if there is one."""
    repository = os.path.dirname(os.path.dirname(os.path.dirname(config_lib.__file__)))  # cleannet_tf/config/
    path = os.path.join(repository, "configs", f"{name}.py")
    return path if os.path.exists(path) else None


def _without_tensorflow_info(record: std_logging.LogRecord) -> bool:
    """False for INFO records logged from inside TensorFlow's own modules (e.g. "Sharding callback duration")."""
    import tensorflow as tf  # loaded already: the package imports it

    return record.levelno >= std_logging.WARNING or not record.pathname.startswith(
        os.path.dirname(tf.__file__) + os.sep)


def setup(argv: list[str], step: str, *, lock: bool = True) -> tuple[ml_collections.ConfigDict, str]:
    """Validates flags and config, creates the workdir and takes its lock (pipeline.start_command).

    lock=False: processes that share the workdir on purpose (the workers of a multi-host extraction).

    Raises:
        ValueError: an unexpected argument, no --workdir, a bad config field, a workdir that is a file.
        workdir_lock.WorkdirBusyError: another process holds the workdir (the message names it).
    """
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments: {' '.join(argv[1:])} (flags are written --name=value).")
    if not _WORKDIR.value:
        raise ValueError("--workdir is required: the folder every step reads from and writes to.")
    config = config_lib.validate(_CONFIG.value)
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir} is a file, not a folder: choose a folder (it is created if missing).")
    distribute.configure_logical_cpus(config.runtime.logical_cpu_devices)
    from cleannet_tf.pipeline import runner

    runner.start_command(config, workdir, step, lock=lock)  # the workdir lock for the whole process
    if logging.get_verbosity() < 1:  # TensorFlow's own INFO lines (checkpoint sharding, ...) only with --verbosity=1
        std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING)
        logging.get_absl_handler().addFilter(_without_tensorflow_info)  # TF modules that log through absl
    logging.info("%s: workdir %s", step, workdir)
    logging.vlog(1, "config:\n%s", config)
    return config, workdir


def config_if_given() -> ml_collections.ConfigDict | None:
    """The validated --config, or None when the command line names no --config file."""
    if flags.FLAGS["config"].using_default_value:
        return None
    return config_lib.validate(_CONFIG.value)


def set_default_config(path: str | None, argv: list[str]) -> None:
    """Makes `path` the --config default when argv names no --config (for commands that have a natural one).

    The override flags (--config.section.field) the schema's default defined are removed first, so the new
    default defines its own.
    """
    if not path or any(arg == "--config" or arg.startswith("--config=") for arg in argv[1:]):
        return
    for name in [name for name in flags.FLAGS if name.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.set_default("config", path)


def describe_error(error: BaseException) -> str:
    """One line for people: what went wrong and where (the file, when the error knows it)."""
    if isinstance(error, atomic_io.DiskFullError):  # "Cannot write PATH: no space left on device; ..."
        return f"{error.strerror}."
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}no space left on device: free some space (or choose another --workdir) and rerun."
    if isinstance(error, OSError) and error.filename and error.strerror:
        text = f"{error.filename}: {error.strerror}"
        if error.filename2:
            text += f" (-> {error.filename2})"
        return text + "."
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (zipfile.BadZipFile, EOFError)):
        text = f"{type(error).__name__}: {text}"
    return text


def command_name() -> str:
    """`cleannet-verify` for the console script and for `python -m cleannet_tf.cli.verify`."""
    base = os.path.basename(sys.argv[0]) if sys.argv else "cleannet"
    stem = os.path.splitext(base)[0]
    return base if base.startswith("cleannet-") else f"cleannet-{stem.replace('_', '-')}"


def _show_traceback() -> bool:
    return _DEBUG.value or logging.get_verbosity() >= 1


def reporting_errors(main: Callable[[list[str]], object]) -> Callable[[list[str]], object]:
    """`main`, with expected errors printed as one line (exit status 1) instead of a traceback."""

    def wrapped(argv: list[str]) -> object:
        try:
            return main(argv)
        except app.UsageError as error:  # a bad combination of flags
            _print_error(error)
            raise SystemExit(error.exitcode or 1) from None
        except EXPECTED_ERRORS as error:
            _print_error(error)
            raise SystemExit(1) from None

    return wrapped


def _print_error(error: BaseException) -> None:
    if _show_traceback():
        traceback.print_exc()
    hint = "" if _show_traceback() else " (--debug shows the traceback)"
    sys.stderr.write(f"{command_name()}: error: {describe_error(error)}{hint}\n")
    sys.stderr.flush()


def run(main: Callable[[list[str]], object], *, default_config: str | None = None,
        pipeline_flags: bool = True, workdir_flag: bool = True) -> None:
    """app.run(main) with one-line errors and a --help that shows the module docstring and its flags.

    Args:
        main: the entry script's main(argv).
        default_config: a config file that replaces the schema's default --config (e.g. configs/demo.py).
        pipeline_flags: show --config and --workdir in --help (False for cleannet-serve, which has neither).
        workdir_flag: show --workdir in --help (False for cleannet-config).
    """
    module = sys.modules[main.__module__]
    main_module = sys.modules["__main__"]
    if module is not main_module and not main_module.__doc__:  # a console script's stub: absl prints its doc
        main_module.__doc__ = module.__doc__
    set_default_config(default_config, sys.argv)
    hidden = (() if pipeline_flags else ("config", "workdir")) + (() if workdir_flag else ("workdir",))
    shown = [name for name in _COMMON_FLAGS if name not in hidden]
    own = flags.FLAGS.flags_by_module_dict().get(main.__module__, [])
    for flag in [flags.FLAGS[name] for name in shown] + own:
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(reporting_errors(main))
