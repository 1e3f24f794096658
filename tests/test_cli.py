"""The absl entry points, run as users run them: subprocesses on real files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cleannet_tf.data import table as data_table
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.pipeline.steps import STEPS

pytestmark = pytest.mark.slow  # every test here runs the entry points as subprocesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args):
    return subprocess.run([sys.executable, "-m", f"cleannet_tf.cli.{module}", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_unknown_config_field_is_rejected_by_name(tmp_path):
    result = _run("extract", f"--workdir={tmp_path}", "--config=configs/demo.py", "--config.refs.num_refs=3")
    assert result.returncode != 0
    assert "num_refs" in result.stderr


def test_inconsistent_config_is_rejected_by_name(tmp_path):
    result = _run("refs", f"--workdir={tmp_path}", "--config=configs/demo.py", "--config.train.batch_size=63")
    assert result.returncode != 0
    assert "config.train.batch_size: must be even" in result.stderr


def test_demo_runs_every_step_then_skips_them(tmp_path):
    workdir = tmp_path / "demo"
    args = [f"--workdir={workdir}", "--config=configs/demo.py:digits", "--config.data.demo_images_per_class=40",
            "--config.classifier.epochs=2", "--config.train.steps=150", "--config.train.eval_every=50",
            "--config.train.log_every=50", "--config.refs.n_init=1"]
    first = _run("demo", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "cleannet_tf demo" in first.stdout and "held-out classes" in first.stdout
    assert "10 classes" in first.stdout and "30.0% of the noisy labels are wrong" in first.stdout
    for path in ("classifier/model.keras", "classifier/metrics.json", "features/manifest.json", "references.npz",
                 "cleannet/model.keras", "cleannet/metrics.json", "config.demo.json", "verify/scores.tsv",
                 "verify/metrics.json", "verify/verifier.keras"):
        assert (workdir / path).exists(), path
    references = ReferenceSets.load(str(workdir / "references.npz"))
    assert references.references.shape == (10, 8, 256)
    cleannet = json.loads((workdir / "cleannet" / "metrics.json").read_text())
    assert cleannet["detection_error_heldout"] is not None and 0.0 <= cleannet["detection_error"] <= 1.0
    # Held-out protocol: 5 of 10 classes lose their verified training rows, keep validation rows.
    config = json.loads((workdir / "config.demo.json").read_text())
    heldout_list = workdir / "demo_data" / "meta" / f"classes_heldout_{config['data']['demo_heldout']}.txt"
    table = read_food101n(str(workdir / "demo_data"), heldout_list=str(heldout_list))
    assert int(table.heldout_classes.sum()) == 5
    in_heldout = table.heldout_classes[table.labels]
    verified = table.verification >= 0
    assert not (verified & in_heldout & (table.split == data_table.SPLIT_TRAIN)).any()
    verify = json.loads((workdir / "verify" / "metrics.json").read_text())
    assert (verified & in_heldout & (table.split == data_table.SPLIT_VAL)).sum() == verify["n_val_heldout"]
    assert verify["detection_error_heldout"] is not None
    # CleanNet trained without the held-out classes' and the calibration classes' verified rows.
    calibration = [table.class_names.index(name) for name in verify["calibration_classes"]]
    assert calibration and not table.heldout_classes[calibration].any()
    calibration_val = verified & np.isin(table.labels, calibration) & (table.split == data_table.SPLIT_VAL)
    assert cleannet["best"]["n_val_heldout"] == verify["n_val_heldout"] + calibration_val.sum()
    assert "the ten most suspicious labels" in first.stdout
    listed = first.stdout.split("the ten most suspicious labels")[1].split("  served")[0].splitlines()[2:]
    ranks = [float(line.split()[3]) for line in listed if line.strip()]
    assert len(ranks) == 10 and ranks == sorted(ranks)  # by the rank score (the stacked logit), lowest first
    classifier = json.loads((workdir / "classifier" / "metrics.json").read_text())
    assert classifier["weighting"] == "none" and 0.0 <= classifier["test_accuracy"] <= 1.0
    # It ends by exporting, serving saved_models/ and verifying images through the official stub.
    assert (workdir / "saved_models" / "models.config").exists()
    assert (workdir / "saved_models" / "cleannet_verifier" / "1" / "saved_model.pb").exists()
    assert "through the TF Serving gRPC API" in first.stdout and "classifier (Classify API)" in first.stdout
    served = first.stdout.split("through the TF Serving gRPC API")[1].split("classifier (Classify API)")[0]
    assert served.count("label looks right") + served.count("WRONG LABEL?") == 5

    second = _run("demo", *args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("already complete") == len(STEPS) - 1  # the plan step: only with nothing verified


def test_refs_then_train_on_precomputed_features(tmp_path):
    from conftest import write_feature_dataset

    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    flags = [f"--config.{k}={v}" for k, v in overrides.items()] + [
        f"--workdir={tmp_path / 'work'}", "--config.refs.num_references=16", "--config.refs.n_init=1",
        "--config.train.steps=100", "--config.train.batch_size=16", "--config.train.eval_every=50",
        "--config.train.learning_rate=0.05", "--config.runtime.strategy=default"]
    extract = _run("extract", *flags)
    assert extract.returncode == 0 and "extraction skipped" in extract.stderr
    assert _run("refs", *flags).returncode == 0
    train = _run("train", *flags)
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((tmp_path / "work" / "cleannet" / "metrics.json").read_text())
    assert metrics["best_step"] in (50, 100) and np.isfinite(metrics["detection_error"])
    # The step commands write the DONE records cleannet-run trusts, and config.<step>.json of their outputs.
    refs = json.loads((tmp_path / "work" / "done" / "refs.json").read_text())
    train = json.loads((tmp_path / "work" / "done" / "train.json").read_text())
    assert train["inputs"] == {"refs": refs["id"]} and train["config"]["train.steps"] == 100
    assert "references.npz" in refs["outputs"] and "cleannet/model.keras" in train["outputs"]
    assert json.loads((tmp_path / "work" / "config.train.json").read_text())["train"]["steps"] == 100
    assert not (tmp_path / "work" / "done" / "extract.json").exists()  # skipped: precomputed features


def test_run_chains_the_steps_and_skips_complete_ones(tmp_path):
    from conftest import write_feature_dataset

    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    flags = [f"--config.{k}={v}" for k, v in overrides.items()] + [
        f"--workdir={tmp_path / 'work'}", "--config.refs.num_references=16", "--config.refs.n_init=1",
        "--config.train.steps=60", "--config.train.batch_size=16", "--config.train.eval_every=30",
        "--config.classifier.epochs=2"]
    first = _run("run", *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = dict(line.split(None, 1) for line in first.stdout.strip().splitlines())
    assert lines["extract"].startswith("skipped") and lines["train"].startswith("60 steps")
    # With data.features the classifiers are softmax heads on the features; export has no image model to serve.
    assert lines["train_classifier"].startswith("2 epochs on the noisy labels")
    assert lines["verify"].startswith("threshold") and lines["weighted_classifiers"].startswith("test accuracy soft")
    assert lines["export"] == "skipped: precomputed features (data.features): the models take features, not images"
    assert json.loads((tmp_path / "work" / "classifier_soft" / "metrics.json").read_text())["input"] == "features"
    second = _run("run", *flags)
    assert second.returncode == 0
    lines = dict(line.split(None, 1) for line in second.stdout.strip().splitlines())
    assert lines["refs"] == lines["train"] == "already complete"


def test_demo_takes_config_overrides_without_config_flag(tmp_path):
    # Its default --config is configs/demo.py; an override alone must reach it (and be validated).
    result = _run("demo", f"--workdir={tmp_path}", "--config.train.steps=-1")
    assert result.returncode != 0
    assert "train.steps" in result.stderr and "defined twice" not in result.stderr
