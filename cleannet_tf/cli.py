"""Flag plumbing shared by the absl entry scripts (the library never reads flags).

Every command takes `--config=configs/<x>.py` (fields overridable as
`--config.section.field=value`; unknown fields are rejected) and `--workdir=DIR`.
"""

from __future__ import annotations

import os
import sys

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cleannet_tf import config as config_lib
from cleannet_tf import distribute

_CONFIG = config_flags.DEFINE_config_file(
    "config", config_lib.__file__, "An ml_collections config file, e.g. configs/demo.py (default: the schema's "
    "defaults, cleannet_tf/config.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder every step reads from and writes to.")


def default_config_path(name: str) -> str | None:
    """configs/<name>.py of the source checkout this package runs from, if there is one."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", f"{name}.py")
    return path if os.path.exists(path) else None


def setup(argv: list[str], step: str) -> tuple[ml_collections.ConfigDict, str]:
    """Validates flags and config, creates the workdir and takes its lock (pipeline.start_command)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required.")
    config = _CONFIG.value
    try:
        config_lib.validate(config)
    except ValueError as error:
        raise app.UsageError(str(error)) from error
    distribute.configure_logical_cpus(config.runtime.logical_cpu_devices)
    workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
    from cleannet_tf import pipeline, workdir_lock

    try:  # the workdir lock for the whole process; config.<step>.json
        pipeline.start_command(config, workdir, step)
    except workdir_lock.WorkdirBusyError as error:
        sys.exit(f"cleannet-{step.replace('_', '-')}: {error}")
    logging.info("%s: workdir %s, config:\n%s", step, workdir, config)
    return config, workdir


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
