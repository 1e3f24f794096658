"""cleannet-run killed at the boundaries of its steps (fault injection, not timing) finishes on rerun with the
results of an uninterrupted run.

One uninterrupted run (tests/kill_boundaries.py, counting only) lists every boundary it meets, in order: each
output's temporary file or folder written and not yet renamed, each training checkpoint saved, each DONE record
about to be written (47 on this dataset). Killing a fresh run at each and rerunning it would cost ~90 processes;
the test kills ONE chain of runs instead, each at the next boundary of KILLS (a documented spread: after the
classifier's and CleanNet's last checkpoints, the references' temporary file, a file inside verify's temporary
folder, the verify folder before its rename, the train and verify DONE records), with os._exit(137) (as SIGKILL:
no finally block), each rerun resuming what the last left. Then one rerun completes it, and its verify/scores.tsv
and the metrics equal the uninterrupted run's. Before b7cba3f the rerun after the classifier's last checkpoint
crashed (IndexError), and after CleanNet's (TypeError on a None samples/s).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_feature_dataset
from kill_boundaries import label

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--config=" + str(ROOT / "configs" / "tiny.py"), "--config.data.format=tsv",
         "--config.data.root=data/labels.tsv", "--config.data.features=data/features.npz",
         "--config.data.check_images=false", "--config.refs.num_references=4", "--config.train.steps=20",
         "--config.train.checkpoint_every=10", "--config.train.eval_every=10", "--config.train.log_every=10",
         "--config.classifier.epochs=1", "--config.classifier.batch_size=32", "--config.classifier.after_verify=soft"]
KILLS = ("checkpoint classifier/checkpoints/ckpt-7", "write references.npz", "checkpoint cleannet/checkpoints/ckpt-20",
         "record done/train.json", "write verify.tmp/report.html", "write verify", "record done/verify.json")
# Figures of a run that depend on the clock, not on what was computed.
TIMING = {"samples_per_second", "seconds", "images_per_second", "finished", "started", "pid", "wall_seconds"}


def _run(cwd: Path, events: Path, kill: str = "-") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tests" / "kill_boundaries.py"), str(events), kill,
                           "--workdir=work", *FLAGS], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), os.environ.get("PYTHONPATH", "")])})


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _results(work: Path) -> dict:
    """What an uninterrupted and a killed-and-rerun run must agree on. A classifier's metrics.json is written
    once, at the end (its payload evaluates the test split), so its history covers the run that finished it."""
    metrics = {path: _without_timing(json.loads((work / path).read_text()))
               for path in ("verify/metrics.json", "cleannet/metrics.json", "classifier/metrics.json",
                            "classifier_soft/metrics.json")}
    for path in ("classifier/metrics.json", "classifier_soft/metrics.json"):
        metrics[path].pop("history")
    return {"scores": (work / "verify" / "scores.tsv").read_text(), **metrics}


@pytest.mark.slow
def test_a_run_killed_at_each_boundary_in_turn_finishes_as_an_uninterrupted_one(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for folder in (clean, killed):
        write_feature_dataset(folder / "data", num_classes=4, per_class=60, feature_dim=8)
    result = _run(clean, clean / "events.txt")
    assert result.returncode == 0, result.stderr[-3000:]
    boundaries = [label(line) for line in (clean / "events.txt").read_text().splitlines()]
    assert [kill for kill in KILLS if kill not in boundaries] == []  # each is a boundary of an uninterrupted run
    assert len(boundaries) > 40 and {line.split()[0] for line in boundaries} == {"write", "checkpoint", "record"}

    events = killed / "events.txt"
    for kill in KILLS:  # each run of the chain resumes what the last left and is killed at the next boundary
        result = _run(killed, events, kill)
        assert result.returncode == 137, (kill, result.returncode, result.stderr[-3000:])
        assert label(events.read_text().splitlines()[-1]) == kill
    result = _run(killed, events)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _results(killed / "work") == _results(clean / "work")
    rerun = _run(killed, events)  # and then it is complete
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    steps = dict(line.split(None, 1) for line in rerun.stdout.splitlines() if not line.startswith("WARNING"))
    assert {steps[step] for step in ("train_classifier", "refs", "train", "verify", "weighted_classifiers")} == {
        "already complete"}, steps
