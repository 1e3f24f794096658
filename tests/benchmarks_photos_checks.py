"""benchmarks/photos_realnoise.py's metric code and benchmarks/photos_truth.py's true-label copy, on tiny inputs (run by
test_benchmarks_photos.py in a process of its own)."""

import os

import numpy as np
import pytest

from benchmarks import photos_realnoise, photos_truth
from cleannet_tf.training import pool


def test_gap_recovered():
    assert photos_realnoise.gap_recovered(0.5, 0.7, 0.9) == pytest.approx(0.5)
    assert photos_realnoise.gap_recovered(0.5, 0.4, 0.9) == pytest.approx(-0.25)
    assert np.isnan(photos_realnoise.gap_recovered(0.5, 0.7, 0.5))


def test_pool_metrics_against_truth():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.6])
    correct = np.array([1, 0, 0, 0, 1, 1])
    held = np.array([False, False, False, True, True, True])
    m = photos_realnoise.pool_metrics(scores, correct, 0.5, held)
    # V rows: flagged {1}; wrong {1, 2}: one error of three, precision 1, recall 1/2
    assert m["error pool V"] == pytest.approx(1 / 3)
    assert (m["precision pool V"], m["recall pool V"]) == (pytest.approx(1.0), pytest.approx(0.5))
    assert m["error pool H"] == 0.0 and m["f1 pool H"] == pytest.approx(1.0)
    assert m["error pool all"] == pytest.approx(1 / 6)


def test_evaluate_threshold_from_verified_classes():
    """The threshold comes from verified_train rows of verified classes; pool metrics use it on the unverified rows
    (8 and 9 here) only."""
    labels = np.array([0, 0, 1, 1, 0, 1, 2, 2, 2, 2])
    correct = np.array([1, 0, 1, 0, 1, 1, 1, 0, 1, 0], np.int8)
    scores = np.where(correct == 1, 0.8, 0.2) + np.linspace(0, 0.05, 10)
    verification = np.full(10, -1, np.int8)
    verified_train, validation = np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])
    verification[verified_train] = correct[verified_train]
    verification[validation] = correct[validation]
    data = pool.TrainingData(features=np.zeros((10, 2), np.float32), labels=labels, verification=verification,
                             table_rows=np.arange(10), verified_train=verified_train, validation=validation,
                             heldout_classes=np.array([False, False, True]), class_names=("a", "b", "c"))
    out = photos_realnoise.evaluate(data, correct, scores)
    assert out["error V"] == 0.0 and out["error H"] == 0.0
    assert out["error pool all"] == 0.0 and out["recall pool H"] == 1.0
    flagged = photos_realnoise.evaluate(data, correct, flagged=np.zeros(10, bool))
    assert flagged["error pool all"] == pytest.approx(0.5) and "roc_auc pool all" not in flagged  # row 9 of 8, 9
    assert "error pool V" not in flagged  # every row of the verified classes was verified


def test_stage_seconds():
    finished = {"train_classifier": 100.0, "extract": 160.0, "verify": 200.0}
    assert photos_realnoise.stage_seconds(finished, 40.0) == {"train_classifier": 60.0, "extract": 60.0,
                                                              "verify": 40.0}
    assert photos_realnoise.stage_seconds(finished, None) == {"extract": 60.0, "verify": 40.0}


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def test_truth_copy(tmp_path):
    release = tmp_path / "rel"
    keys = ["a/i00001.jpg", "b/i00002.jpg", "a/i00003.jpg"]
    true = ["a", "a", "b"]
    for key in keys:
        _write(str(release / "images" / key), ["jpeg bytes " + key])
    _write(str(release / "test" / "a" / "t00001.jpg"), ["test"])
    _write(str(release / "meta" / "classes.txt"), ["class_name", "a", "b"])
    _write(str(release / "meta" / "test.txt"), ["a/t00001"])
    _write(str(release / "meta" / "classes_heldout_1.txt"), ["class_name\tkeep", "a\t1", "b\t0"])
    _write(str(release / "meta" / "imagelist.tsv"), ["class_name/key", *keys])
    _write(str(release / "meta" / "verified_train.tsv"), ["class_name/key.jpg\tverification_label", "b/i00002.jpg\t0"])
    _write(str(release / "meta" / "verified_val.tsv"), ["class_name/key.jpg\tverification_label", "a/i00001.jpg\t1"])
    truth = tmp_path / "rel.truth.tsv"
    _write(str(truth), ["key\tnoisy\ttrue", *(f"{k}\t{k[0]}\t{t}" for k, t in zip(keys, true, strict=True))])
    dest = photos_truth.make_truth_copy(str(release), str(truth), str(tmp_path / "copy"))
    photos_truth.make_truth_copy(str(release), str(truth), dest)  # again: idempotent
    with open(os.path.join(dest, "meta", "imagelist.tsv")) as f:
        assert f.read().splitlines() == ["class_name/key", "a/i00001.jpg", "a/i00002.jpg", "b/i00003.jpg"]
    with open(os.path.join(dest, "images", "a", "i00002.jpg")) as f:
        assert f.read() == "jpeg bytes b/i00002.jpg\n"
    with open(os.path.join(dest, "meta", "verified_train.tsv")) as f:
        assert f.read().splitlines()[1] == "a/i00002.jpg\t1"
    assert os.path.exists(os.path.join(dest, "test", "a", "t00001.jpg"))
    assert os.path.exists(os.path.join(dest, "meta", "classes_heldout_1.txt"))


def test_read_truth_names_bad_file(tmp_path):
    path = tmp_path / "bad.truth.tsv"
    _write(str(path), ["key\tlabel", "a/x.jpg\ta"])
    with pytest.raises(ValueError, match="bad.truth.tsv: line 1"):
        photos_truth.read_truth(str(path))
    _write(str(path), ["key\tnoisy\ttrue", "a/x.jpg\ta"])
    with pytest.raises(ValueError, match="bad.truth.tsv: line 2"):
        photos_truth.read_truth(str(path))
