"""Your own photos with nothing verified: cleannet-run ranks and plans (pipeline/cold_start.py), the review's answers
make the next run calibrated (real cleannet-run processes on a folder of class subfolders with precomputed
features made here)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from conftest import write_jpeg
from sklearn.metrics import roc_auc_score

from cleannet_tf.detection import cold_start
from cleannet_tf.pipeline import records, scores_tsv

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES, PER_CLASS = 4, 80
SETTINGS = {"data.root": "photos", "data.features": "features.npz", "cleannet.mode": "stacked",
            "verify.signals": "classifier_score,classifier_margin", "verify.classifier_rounds": 1,
            "verify.plan_fraction": 0.25, "classifier.epochs": 3, "classifier.batch_size": 16, "train.steps": 100,
            "train.eval_every": 50, "train.checkpoint_every": 50, "runtime.strategy": "default"}
UNREVIEWED = "class3"  # the class the reviewer leaves out: its scores come by transfer


def _run(cwd) -> subprocess.CompletedProcess:
    flags = [f"--config.{field}={value}" for field, value in SETTINGS.items()]
    result = subprocess.run([sys.executable, "-m", "cleannet_tf.cli.run", f"--config={ROOT / 'configs' / 'tiny.py'}",
                             "--workdir=work", *flags], cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
                                "PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _status(result) -> dict[str, str]:
    steps = ("train_classifier", "extract", "refs", "plan", "train", "verify", "weighted_classifiers", "export")
    return {line.split(None, 1)[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()
            if line.split(None, 1) and line.split(None, 1)[0] in steps}


def _photos(folder: Path) -> dict[str, bool]:
    """FOLDER/photos/<noisy class>/<image>.jpg and FOLDER/features.npz of planted clusters; key -> label wrong."""
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(NUM_CLASSES), PER_CLASS)
    noisy = true.copy()
    flipped = rng.random(len(true)) < 0.25
    noisy[flipped] = (true[flipped] + rng.integers(1, NUM_CLASSES, flipped.sum())) % NUM_CLASSES
    centres = rng.gamma(1.0, 1.0, (NUM_CLASSES, 16)) * 3
    features = np.maximum(centres[true] + rng.normal(0, 0.8, (len(true), 16)), 0).astype(np.float32)
    keys = [f"class{label}/img{i:04d}.jpg" for i, label in enumerate(noisy)]
    for key in keys:
        write_jpeg(folder / "photos" / key)
    np.savez(folder / "features.npz", keys=np.array(keys), features=features)
    return {key: bool(wrong) for key, wrong in zip(keys, noisy != true, strict=True)}


def _config_run(workdir: Path, monkeypatch) -> ml_collections.ConfigDict:
    """The config _run runs with, in its folder (relative data paths, as cleannet-run was given them)."""
    import importlib.util

    from cleannet_tf import config as config_lib

    monkeypatch.chdir(workdir.parent)
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for field, value in SETTINGS.items():
        section, name = field.split(".")
        config[section][name] = value
    return config_lib.validate(config)


def _plan(workdir: Path) -> list[dict]:
    lines = (workdir / "verify" / "to_verify.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A folder of photos, its truth, and the first cleannet-run's output on it."""
    folder = tmp_path_factory.mktemp("photos")
    wrong = _photos(folder)
    return folder, wrong, _run(folder)


def test_a_run_with_nothing_verified_ranks_every_image_and_plans_what_to_verify(cold, monkeypatch):
    folder, wrong, result = cold
    status = _status(result)
    assert status["plan"].startswith("nothing verified yet: 320 images ranked (uncalibrated), 80 to verify")
    for step in ("train", "verify", "weighted_classifiers"):
        assert status[step].startswith("skipped: nothing verified yet"), status[step]
    work = folder / "work"
    assert f"Verify them:  cleannet-review --workdir={work}" in result.stdout
    assert "80 labels to verify (60 val, 20 train)" in result.stdout and "Then run again: cleannet-run" in result.stdout

    plan = _plan(work)
    header = (work / "verify" / "to_verify.tsv").read_text().splitlines()[0].split("\t")
    assert header[0] == "class_name/key" and "split" in header
    assert len(plan) == cold_start.plan_size(320, NUM_CLASSES, 0.25) == 80
    assert len({row["class_name/key"] for row in plan}) == 80 and all(row["class_name/key"] in wrong for row in plan)
    for c in range(NUM_CLASSES):
        assert {row["split"] for row in plan if row["class_name/key"].startswith(f"class{c}/")} == {"train", "val"}
    assert {row["class_name/key"].split("/")[0] for row in plan[:NUM_CLASSES]} == {f"class{c}" for c in range(4)}

    metrics = json.loads((work / "verify" / "metrics.json").read_text())
    assert metrics["calibrated"] is False and metrics["uncalibrated_reason"]
    assert metrics["detection_error"] is None and metrics["roc_auc"] is None and metrics["n_val"] == 0
    scores = scores_tsv.read_scores_tsv(str(work / "verify" / "scores.tsv"))
    assert sorted(scores.keys) == sorted(wrong) and np.isnan(scores.p_correct).all()
    truth = np.array([wrong[key] for key in scores.keys])
    assert roc_auc_score(truth, -scores.rank_score) > 0.9  # ranked without a single verified label
    assert not (work / "cleannet").exists()

    config = _config_run(work, monkeypatch)  # the same inputs: nothing to do (what cleannet-run checks first)
    for name in ("train_classifier", "refs", "plan"):
        assert records.staleness(name, config, str(work)) is None, name
    assert records.staleness("train", config, str(work)) == "not run yet"


def test_the_run_after_the_review_is_calibrated_on_every_class(cold, tmp_path, monkeypatch):
    source, wrong, _ = cold
    folder = tmp_path / "copy"
    shutil.copytree(source, folder, symlinks=True)
    work = folder / "work"
    answers = {"train": [], "val": []}
    for row in _plan(work):  # a reviewer answers every planned image but those of one class
        key = row["class_name/key"]
        if not key.startswith(f"{UNREVIEWED}/"):
            answers[row["split"]].append(f"{key}\t{int(not wrong[key])}")
    (work / "review").mkdir()
    for split, lines in answers.items():
        (work / "review" / f"verified_{split}.tsv").write_text(
            "\n".join(["class_name/key.jpg\tverification_label", *lines]) + "\n")

    status = _status(_run(folder))
    assert "plan" not in status
    assert status["train"].startswith("100 steps") and status["verify"].startswith("threshold")
    metrics = json.loads((work / "verify" / "metrics.json").read_text())
    assert metrics["calibrated"] is True and metrics["n_val"] == len(answers["val"])
    assert "Platt-calibrated P(label correct) is 1/2" in metrics["threshold_rows"]
    assert metrics["detection_error"] is not None and metrics["detection_error"] < 0.15
    scores = scores_tsv.read_scores_tsv(str(work / "verify" / "scores.tsv"))
    assert np.isfinite(scores.p_correct).all()
    truth = np.array([wrong[key] for key in scores.keys])
    unreviewed = np.char.startswith(scores.keys.astype(str), f"{UNREVIEWED}/")
    assert np.mean(scores.noisy[unreviewed] == truth[unreviewed]) > 0.85  # transfer to the class nobody verified
    assert np.mean(scores.noisy == truth) > 0.85
    assert {row["split"] for row in _plan(work)} == {"train"}  # the next proposals

    config = _config_run(work, monkeypatch)  # a rerun has nothing to do; one more answer reruns CleanNet and verify
    for name in ("train_classifier", "refs", "train", "verify", "weighted_classifiers"):
        assert records.staleness(name, config, str(work)) is None, name
    with open(work / "review" / "verified_train.tsv", "a") as f:
        key = next(key for key in wrong if key.startswith(f"{UNREVIEWED}/"))
        f.write(f"{key}\t{int(not wrong[key])}\n")
    for name in ("train", "verify"):
        assert "verification_files" in records.staleness(name, config, str(work)), name
    assert records.staleness("refs", config, str(work)) is None
