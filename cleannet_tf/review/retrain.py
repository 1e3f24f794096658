"""Retrain from the review page: the pipeline's train and verify steps, in a background thread of the server.

    WORKDIR/review/config.json + config.py   the config the retrain runs with, data.extra_verified including the
                                             review's files (the --config of the same commands run by hand)
    WORKDIR/review/retrain.log               what the steps log (the page polls it)
    WORKDIR/review/history.json              one entry per retrain: decisions, metrics.json before and after
    WORKDIR/review/previous/<time>/          what the retrain replaced (retrain_backup.py): the CleanNet run
                                             (cleannet-train resumes a finished run as done, so it is moved aside
                                             first), copies of verify/ and the DONE records

The steps run in this process (pipeline.runner.run_step) under the workdir lock, which cleannet-review holds while
it serves (the lock is re-entrant within a process): no other process writes the workdir meanwhile. The steps
train needs (refs, extract) run first when not complete; nothing is set aside until they are and the table loads
with what training needs. A retrain that fails puts back the previous outputs and DONE records; one killed with
the server is undone on the next start (`recover`).

Imports `atomic_io`, `config`, `pipeline`, `review.retrain_backup`, `review.store`, `training`.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import shlex
import threading
import time

import ml_collections
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf import config as config_lib
from cleannet_tf.pipeline import lock as workdir_lock
from cleannet_tf.pipeline import records, runner
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import review_dir
from cleannet_tf.review import retrain_backup
from cleannet_tf.review.store import now as _now

# The metrics.json fields the page compares before / after a retrain.
METRICS = ("detection_error", "detection_error_heldout", "detection_error_all", "roc_auc", "roc_auc_heldout",
           "n_val", "n_val_heldout", "n_flagged", "n_images", "threshold")
STEPS = (("train", "cleannet-train"), ("verify", "cleannet-verify"))
_CONFIG_PY = '''"""Written by cleannet-review: the config it served with (config.json beside this file)."""

import json
import os

import ml_collections


def get_config():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))
'''


def retrain_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """`config` with data.merge_review on: the review's files (verified_train.tsv, verified_val.tsv) applied."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.merge_review = True
    return config_lib.validate(config)


def write_retrain_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes WORKDIR/review/config.{json,py} (retrain_config); returns the .py path."""
    config = retrain_config(config, workdir)
    directory = review_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    atomic_io.write_text(os.path.join(directory, "config.json"),
                         json.dumps(config.to_dict(), indent=2, sort_keys=True))
    path = os.path.join(directory, "config.py")
    atomic_io.write_text(path, _CONFIG_PY)
    return path


def metrics_subset(metrics: dict | None) -> dict | None:
    return None if metrics is None else {name: metrics.get(name) for name in METRICS}


def _prerequisites(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The steps before train whose outputs it reads (run first when not complete; complete ones are skipped)."""
    classifier = ("train_classifier",) if config.model.weights == "classifier" and not config.data.features else ()
    return (*classifier, "extract", "refs")


def recover(config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Undoes a retrain the server was killed in (call under the workdir lock, before reading the workdir).

    Kept instead when its steps completed since (verify complete for the retrain's config). Returns whether a
    retrain was pending.
    """
    workdir = os.path.abspath(workdir)
    directory = review_dir(workdir)
    marker = retrain_backup.pending(directory)
    if marker is None:
        return False
    if records.staleness("verify", retrain_config(config, workdir), workdir) is None:
        retrain_backup.finish(directory)
        logging.info("The interrupted retrain's steps completed since; its new outputs stay.")
    else:
        retrain_backup.restore(workdir, directory, marker)
        logging.warning("A retrain was interrupted (the server was stopped): the outputs from before it are back, "
                        "from %s.", marker["backup"])
    return True


def _one_line(error: BaseException) -> str:
    """What went wrong, on one line (the file, for an OSError that names one)."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__


class _ThreadLog(std_logging.Handler):
    """Log records of one thread, as lines of a file (the retrain's log the page polls)."""

    def __init__(self, stream, thread: threading.Thread):
        super().__init__(std_logging.INFO)
        self.stream, self.thread_id = stream, thread.ident
        self.setFormatter(std_logging.Formatter("%(levelname).1s %(asctime)s %(message)s", "%H:%M:%S"))

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.thread == self.thread_id

    def emit(self, record: std_logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass


class Retrainer:
    """Runs a retrain in a background thread; `status()` for the page.

    on_finished(succeeded: bool) runs in that thread once the steps end (the server reloads its data).
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, read_metrics, on_finished=None):
        self.workdir = os.path.abspath(workdir)
        self.directory = review_dir(self.workdir)
        self.config = retrain_config(config, self.workdir)
        self.config_path = write_retrain_config(config, self.workdir)
        self.log_path = os.path.join(self.directory, "retrain.log")
        self.history_path = os.path.join(self.directory, "history.json")
        self._read_metrics, self._on_finished = read_metrics, on_finished
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last: dict | None = None

    def shell_commands(self) -> str:
        """The same retrain as a shell line a person can run (console scripts; the old run moved aside first)."""
        moved_to = os.path.join(self.directory, "previous", "cleannet-$(date +%Y%m%dT%H%M%S)")
        lines = [f"mkdir -p {shlex.quote(os.path.dirname(moved_to))} && "
                 f"mv {shlex.quote(os.path.join(self.workdir, 'cleannet'))} {moved_to}"]
        lines += [shlex.join([name, f"--config={self.config_path}", f"--workdir={self.workdir}"]) for _, name in STEPS]
        return " && \\\n  ".join(lines)

    def history(self) -> list[dict]:
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path) as f:
            return json.load(f)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, decisions: int) -> dict:
        """Starts a retrain; raises RuntimeError when one is running."""
        with self._lock:
            if self.running:
                raise RuntimeError("a retrain is running already")
            entry = {"started": _now(), "decisions": decisions,
                     "before": metrics_subset(self._read_metrics(self.workdir))}
            self.last = entry
            started = json.loads(json.dumps(entry))  # a copy: the thread adds to `entry`
            self._thread = threading.Thread(target=self._run, args=(entry,), name="retrain", daemon=True)
            self._thread.start()
            return started

    def _run(self, entry: dict) -> None:
        returncode = 0
        with open(self.log_path, "w", encoding="utf-8") as log:
            handler = _ThreadLog(log, threading.current_thread())
            absl_logger = logging.get_absl_logger()
            level = absl_logger.level
            std_logging.getLogger().addHandler(handler)
            if absl_logger.getEffectiveLevel() > std_logging.INFO:
                absl_logger.setLevel(std_logging.INFO)
            try:
                self._steps(entry, log)
            except Exception as error:  # the page shows it; the server keeps serving
                logging.exception("Retrain failed")
                entry["error"] = _one_line(error)
                log.write(f"retrain failed: {entry['error']}\n")
                returncode = 1
            finally:
                std_logging.getLogger().removeHandler(handler)
                absl_logger.setLevel(level)
        entry.update(finished=_now(), returncode=returncode, after=metrics_subset(self._read_metrics(self.workdir)))
        atomic_io.write_text(self.history_path, json.dumps(self.history() + [entry], indent=2))
        logging.info("Retrain finished (%s).", "succeeded" if returncode == 0 else "failed: " + entry["error"])
        if self._on_finished is not None:
            self._on_finished(returncode == 0)

    def _steps(self, entry: dict, log) -> None:
        """Under the workdir lock: prerequisites, checks, outputs set aside, train, verify; undone on failure."""
        from cleannet_tf.training import distribute

        config = self.config
        with workdir_lock.locked(self.workdir, "cleannet-review retrain"):  # re-entrant: the server holds it
            log.write(f"$ steps {', '.join(_prerequisites(config))} (when not complete), then train, verify "
                      f"(--config={self.config_path})\n")
            log.flush()
            runner.run_steps(config, self.workdir, steps=_prerequisites(config))  # logs a line per step
            table = load_table(config, self.workdir, steps=("train", "verify"))  # what training needs, checked
            strategy = distribute.build_strategy(config.runtime.strategy)
            backup = os.path.join(self.directory, "previous",
                                  entry["started"].replace(":", "").replace("+0000", "Z"))
            marker = retrain_backup.take(self.workdir, self.directory, backup)
            log.write(f"set aside in {backup}: the previous CleanNet run, verify/ and DONE records\n")
            entry["previous_run"] = backup
            try:
                for step, name in STEPS:
                    log.write(f"$ {name} (pipeline step {step}, in cleannet-review)\n")
                    log.flush()
                    started = time.monotonic()
                    status = runner.run_step(step, config, self.workdir, table=table, strategy=strategy)
                    log.write(f"{step}: {status} ({time.monotonic() - started:.0f} s)\n")
            except BaseException:
                retrain_backup.restore(self.workdir, self.directory, marker)
                log.write(f"the previous outputs and DONE records are back (from {backup})\n")
                raise
            retrain_backup.finish(self.directory)

    def status(self, offset: int = 0) -> dict:
        """Running or not, the log from byte `offset`, the commands, the history."""
        log, size = "", 0
        if os.path.exists(self.log_path):
            with open(self.log_path, "rb") as f:
                f.seek(max(offset, 0))
                log = f.read(256_000).decode("utf-8", "replace")
                size = f.tell()
        return {"running": self.running, "log": log, "next_offset": size, "commands": self.shell_commands(),
                "last": self.last, "history": self.history()}

    def stop(self) -> None:
        """Nothing to stop: the steps run in this process and end with it (a killed retrain is undone on restart)."""
