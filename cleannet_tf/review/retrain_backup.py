"""What a retrain replaces, set aside first and put back when it fails (or was killed).

    WORKDIR/review/previous/<time>/   cleannet/ (moved: the train step must start over, not resume a finished run)
                                      verify/, done/, config.train.json, config.verify.json (copies)
    WORKDIR/review/retrain.pending.json   while a retrain runs: which of those existed, where they are

`take` sets them aside, `restore` puts them back (the workdir's outputs and DONE records are then as before the
retrain), `finish` keeps the new ones (the folder stays as the record of the run the retrain replaced). A marker
left by a killed server is found by `pending` on the next start. Run these only under the workdir lock.

Imports `atomic_io`, `pipeline.workdir`.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.pipeline.workdir import cleannet_dir, done_dir, verify_dir

MARKER_NAME = "retrain.pending.json"
_MOVED = ("cleannet",)


def _paths(workdir: str) -> dict[str, str]:
    """name in the backup folder -> its place in the workdir."""
    return {"cleannet": cleannet_dir(workdir), "verify": verify_dir(workdir), "done": done_dir(workdir),
            "config.train.json": os.path.join(workdir, "config.train.json"),
            "config.verify.json": os.path.join(workdir, "config.verify.json")}


def marker_path(review_dir: str) -> str:
    return os.path.join(review_dir, MARKER_NAME)


def take(workdir: str, review_dir: str, backup: str) -> dict:
    """Sets the train and verify steps' outputs and the DONE records aside in `backup`; returns the marker."""
    os.makedirs(backup, exist_ok=True)
    marker = {"backup": backup, "existed": {}}
    for name, path in _paths(workdir).items():
        marker["existed"][name] = os.path.lexists(path)
    atomic_io.write_json(marker_path(review_dir), marker)  # first: a kill from here on is undone on restart
    for name, path in _paths(workdir).items():
        if not marker["existed"][name]:
            continue
        target = os.path.join(backup, name)
        if name in _MOVED:
            os.replace(path, target)
        elif os.path.isdir(path):
            shutil.copytree(path, target, symlinks=True)
        else:
            shutil.copy2(path, target)
    return marker


def restore(workdir: str, review_dir: str, marker: dict) -> list[str]:
    """Puts back what `take` set aside (idempotent: a kill during a restore is finished by the next one)."""
    restored = []
    for name, path in _paths(workdir).items():
        saved = os.path.join(marker["backup"], name)
        if marker["existed"].get(name):
            if not os.path.lexists(saved):
                continue  # put back already
            atomic_io.remove_path(path)
            os.replace(saved, path)
            restored.append(path)
        elif os.path.lexists(path):
            atomic_io.remove_path(path)  # made by the retrain
            restored.append(path)
    os.remove(marker_path(review_dir))
    logging.info("Retrain undone: %s as before it.", ", ".join(restored) or "nothing changed")
    return restored


def finish(review_dir: str) -> None:
    """The retrain succeeded: its outputs stay; the backup folder stays as the record of the old run."""
    os.remove(marker_path(review_dir))


def pending(review_dir: str) -> dict | None:
    """The marker of a retrain that neither finished nor was undone (the server was killed), or None."""
    try:
        with open(marker_path(review_dir)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
