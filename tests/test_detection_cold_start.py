"""detection/cold_start.py: the score that needs no verification, and the verification plan."""

import numpy as np
import pytest

from cleannet_tf.detection import cold_start


def _clusters(num_classes=5, per_class=120, dim=16, noise_rate=0.25, seed=0):
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(num_classes), per_class)
    noisy = true.copy()
    flipped = rng.random(len(true)) < noise_rate
    noisy[flipped] = (true[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    centres = rng.gamma(1.0, 1.0, (num_classes, dim)) * 3
    features = np.maximum(centres[true] + rng.normal(0, 0.8, (len(true), dim)), 0).astype(np.float32)
    return features, true, noisy


def test_out_of_fold_margin_ranks_wrong_labels_first_and_suggests_the_true_class():
    features, true, noisy = _clusters()
    scored = cold_start.out_of_fold_margin(features, noisy, num_classes=5, seed=0)
    wrong = noisy != true
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(wrong, -scored["margin"]) > 0.95
    assert np.mean(scored["suggested_label"][wrong] == true[wrong]) > 0.9
    assert (scored["suggested_score"] >= 0).all()
    # The classifier's own decision (margin < 0) flags mostly wrong labels.
    assert np.mean((scored["margin"] < 0) == wrong) > 0.9
    again = cold_start.out_of_fold_margin(features, noisy, num_classes=5, seed=0)
    np.testing.assert_array_equal(scored["margin"], again["margin"])


def test_out_of_fold_margin_does_not_let_a_label_vouch_for_itself():
    # One image far from every other, labelled class 0: fitted on itself, a ridge classifier with a free
    # direction would learn its label; out of fold it sees nothing like it, so the margin is near 0, not high.
    features, _, noisy = _clusters(per_class=60, noise_rate=0.0)
    lone = np.zeros((1, features.shape[1]), np.float32)
    lone[0, 0] = 1e4
    features = np.concatenate([features, lone])
    labels = np.concatenate([noisy, [0]])
    from cleannet_tf import ops
    from cleannet_tf.detection import signals

    x = ops.log_normalize(features)
    in_sample = x[-1:] @ signals.linear_classifier(x, labels, num_classes=5)[0]
    oof = cold_start.out_of_fold_margin(features, labels, num_classes=5)["margin"][-1]
    own_in_sample = in_sample[0, 0] - np.max(np.delete(in_sample[0], 0))
    assert oof < own_in_sample


def test_plan_size_is_a_share_of_the_pool_with_two_rows_a_class():
    assert cold_start.plan_size(20000, 10, 0.02) == 400
    assert cold_start.plan_size(300, 10, 0.02) == 20  # one of each split per class
    assert cold_start.plan_size(15, 10, 0.02) == 15


def test_plan_holds_a_random_val_share_per_class_and_informative_train_rows():
    features, true, noisy = _clusters(per_class=200)
    margin = cold_start.out_of_fold_margin(features, noisy, num_classes=5)["margin"]
    rows, splits, why = cold_start.plan_verification(noisy, margin, num_classes=5, size=200, seed=3)
    assert {why[i] for i in np.flatnonzero(splits == "val")} == {cold_start.VAL_REASON}
    assert len(rows) == 200 and len(set(rows)) == 200
    for c in range(5):
        in_class = noisy[rows] == c
        assert {"val", "train"} <= set(splits[in_class])
        # The class's most and least suspicious rows (of those not drawn for val) are planned for training.
        members = np.setdiff1d(np.flatnonzero(noisy == c), rows[splits == "val"])
        train = set(rows[in_class & (splits == "train")])
        assert members[np.argmin(margin[members])] in train and members[np.argmax(margin[members])] in train
    # val is never chosen by score: other scores, the same seed -> the same val rows.
    shuffled = np.random.default_rng(0).permutation(margin)
    rows2, splits2, _ = cold_start.plan_verification(noisy, shuffled, num_classes=5, size=200, seed=3)
    assert set(rows[splits == "val"]) == set(rows2[splits2 == "val"])
    assert set(rows[splits == "train"]) != set(rows2[splits2 == "train"])
    # train rows sit nearer the boundary (margin 0) than a random sample of the pool.
    train_rows = rows[splits == "train"]
    assert np.median(np.abs(margin[train_rows])) < np.median(np.abs(margin))
    # Any prefix of two rounds holds both splits; the first round holds every class.
    assert set(noisy[rows[:5]]) == set(range(5))


def test_plan_skips_rows_that_are_not_candidates():
    features, _, noisy = _clusters(per_class=40)
    margin = cold_start.out_of_fold_margin(features, noisy, num_classes=5)["margin"]
    candidates = np.arange(len(noisy)) % 2 == 0
    rows, splits, _ = cold_start.plan_verification(noisy, margin, num_classes=5, size=30, candidates=candidates)
    assert candidates[rows].all() and len(rows) == 30
    with pytest.raises(ValueError, match="val_share"):
        cold_start.plan_verification(noisy, margin, num_classes=5, size=30, val_share=1.0)
