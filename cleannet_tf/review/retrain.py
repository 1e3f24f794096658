"""Retrain from the review page: cleannet-train then cleannet-verify in a background subprocess, one at a time.

    WORKDIR/review/config.json + config.py   the config the server runs with, data.extra_verified including
                                             WORKDIR/review/verified_train.tsv (the --config both commands take)
    WORKDIR/review/retrain.log               the commands' output (the page polls it)
    WORKDIR/review/history.json              one entry per retrain: decisions, metrics.json before and after
    WORKDIR/review/previous/cleannet-<time>/ the CleanNet run the retrain replaced (cleannet-train resumes a
                                             finished run as done, so the old one is moved aside first)

Imports `config`, `pipeline`, `review.store`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shlex
import signal
import subprocess
import sys
import threading

import ml_collections
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.pipeline.workdir import cleannet_dir, review_dir
from cleannet_tf.review.store import now as _now

# The metrics.json fields the page compares before / after a retrain.
METRICS = ("detection_error", "detection_error_heldout", "detection_error_all", "roc_auc", "roc_auc_heldout",
           "n_val", "n_val_heldout", "n_flagged", "n_images", "threshold")
STEPS = (("cleannet-train", "cleannet_tf.cli.train"), ("cleannet-verify", "cleannet_tf.cli.verify"))
_CONFIG_PY = '''"""Written by cleannet-review: the config it served with (config.json beside this file)."""

import json
import os

import ml_collections


def get_config():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")) as f:
        return ml_collections.ConfigDict(json.load(f))
'''


_PR_SET_PDEATHSIG = 1


def _stop_with_parent(parent: int):
    """A Popen preexec_fn: the child gets SIGTERM when the process (thread) that started it dies, even by SIGKILL.

    Linux prctl(PR_SET_PDEATHSIG); elsewhere a no-op. libc is loaded before the fork (no import in the child).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec():
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)
    return preexec


def write_retrain_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes WORKDIR/review/config.{json,py} (the review labels included); returns the .py path."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.merge_review = True
    directory = review_dir(workdir)
    os.makedirs(directory, exist_ok=True)
    atomic_io.write_text(os.path.join(directory, "config.json"), json.dumps(config.to_dict(), indent=2, sort_keys=True))
    path = os.path.join(directory, "config.py")
    atomic_io.write_text(path, _CONFIG_PY)
    return path


def metrics_subset(metrics: dict | None) -> dict | None:
    return None if metrics is None else {name: metrics.get(name) for name in METRICS}


class Retrainer:
    """Runs the retrain commands in a background thread; `status()` for the page.

    on_finished(succeeded: bool) runs in that thread once the commands end (the server reloads its data).
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, read_metrics, on_finished=None,
                 python: str = sys.executable):
        self.workdir = os.path.abspath(workdir)
        self.directory = review_dir(self.workdir)
        self.config_path = write_retrain_config(config, self.workdir)
        self.log_path = os.path.join(self.directory, "retrain.log")
        self.history_path = os.path.join(self.directory, "history.json")
        self._read_metrics, self._on_finished, self._python = read_metrics, on_finished, python
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen | None = None
        self.last: dict | None = None

    def commands(self) -> list[list[str]]:
        """The two commands, as run (python -m ...)."""
        return [[self._python, "-m", module, f"--config={self.config_path}", f"--workdir={self.workdir}"]
                for _, module in STEPS]

    def shell_commands(self, moved_to: str | None = None) -> str:
        """The same as a shell line a person can run (console scripts)."""
        moved_to = moved_to or os.path.join(self.directory, "previous", "cleannet-$(date +%Y%m%dT%H%M%S)")
        lines = [f"mkdir -p {shlex.quote(os.path.dirname(moved_to))} && "
                 f"mv {shlex.quote(cleannet_dir(self.workdir))} {moved_to}"]
        lines += [shlex.join([name, f"--config={self.config_path}", f"--workdir={self.workdir}"]) for name, _ in STEPS]
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
        returncode = None
        with open(self.log_path, "w", encoding="utf-8") as log:
            try:
                source = cleannet_dir(self.workdir)
                if os.path.exists(source):
                    target = os.path.join(self.directory, "previous",
                                          "cleannet-" + entry["started"].replace(":", "").replace("+0000", "Z"))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.replace(source, target)
                    log.write(f"$ mv {source} {target}\n")
                    entry["previous_run"] = target
                for command in self.commands():
                    log.write(f"$ {shlex.join(command)}\n")
                    log.flush()
                    # This thread waits for the child, so the death signal fires only if the server is killed.
                    self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL,
                                                     preexec_fn=_stop_with_parent(os.getpid()),
                                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
                    returncode = self._process.wait()
                    if returncode:
                        log.write(f"exit status {returncode}: stopped.\n")
                        break
            except OSError as error:
                log.write(f"retrain failed: {error}\n")
                returncode = -1
            finally:
                self._process = None
        entry.update(finished=_now(), returncode=returncode, after=metrics_subset(self._read_metrics(self.workdir)))
        history = self.history() + [entry]
        atomic_io.write_text(self.history_path, json.dumps(history, indent=2), sync_folder=True)
        logging.info("Retrain finished (exit status %s).", returncode)
        if self._on_finished is not None:
            self._on_finished(returncode == 0)

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
        """Terminates the running command (the server is shutting down)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
