"""Fitting the verifier (cleannet_tf/detection/fit.py): classifier rounds refit the exported classifier."""


import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from cleannet_tf.detection import fit, verifier
from cleannet_tf.detection import signals as detection_signals
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.model.cleannet import build_cleannet
from cleannet_tf.training import pool


def test_classifier_rounds_refit_the_exported_classifier_and_it_serves_the_fitted_scores(tmp_path):
    # 5 classes (2 held out), 30% of labels flipped to the next class; a small untrained CleanNet (its signals
    # are not used).
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    true = np.repeat(np.arange(5), 80)
    centres = rng.normal(0, 1, (5, 12))
    features = (centres[true] + rng.normal(0, 1.0, (len(true), 12))).astype(np.float32)
    labels = true.copy()
    flip = rng.random(len(true)) < 0.3
    labels[flip] = (true[flip] + 1) % 5
    order = rng.permutation(len(true))
    heldout = np.array([False, False, False, True, True])
    verified_train = np.sort(order[:120][~heldout[labels[order[:120]]]])
    validation = np.sort(order[120:220])
    verification = np.full(len(true), -1, np.int8)
    verification[verified_train] = labels[verified_train] == true[verified_train]
    verification[validation] = labels[validation] == true[validation]
    names = tuple(f"c{c}" for c in range(5))
    data = pool.TrainingData(features, labels.astype(np.int32), verification, np.arange(len(true)), verified_train,
                             validation, heldout, names)
    cleannet = build_cleannet(feature_dim=12, num_references=3, query_hidden_dim=8, reference_hidden_dim=8,
                              attention_dim=4, embed_dim=6)
    reference_sets = ReferenceSets(rng.gamma(1.0, 1.0, (5, 3, 12)).astype(np.float32), np.full(5, 3, np.int32),
                                   names, np.full(5, 80))
    signals = ("classifier_score", "classifier_margin")
    first, first_info = fit.fit_verifier(cleannet, data, reference_sets, mode="stacked", signals=signals)
    model, info = fit.fit_verifier(cleannet, data, reference_sets, mode="stacked", signals=signals,
                                   classifier_rounds=1)
    assert (first_info["classifier_rounds"], info["classifier_rounds"]) == (0, 1)
    assert info["fit_rows"] == "verified_train of verified classes"
    own = np.arange(len(labels)), labels
    p_first = (verifier.class_scores(first, features)[own] + 1) / 2
    weights = detection_signals.classifier_refit_weights(p_first, verified_train, verification[verified_train])
    expected = detection_signals.linear_classifier(detection_signals.log_normalize(features), labels, num_classes=5,
                                           sample_weights=weights)
    head = verifier.verification_head_of(model)
    np.testing.assert_allclose(head.classifier_weights.numpy(), expected[0], atol=1e-4)
    np.testing.assert_allclose(head.classifier_bias.numpy(), expected[1], atol=1e-4)
    assert not np.allclose(head.classifier_weights.numpy(),
                           verifier.verification_head_of(first).classifier_weights.numpy(), atol=1e-3)
    path = str(tmp_path / "verifier.keras")
    model.save(path)
    served = keras.saving.load_model(path)({"features": features, "label": labels.astype(np.int64)})
    scores = verifier.class_scores(model, features)[own]
    np.testing.assert_allclose(served["score"], scores, atol=1e-6)
    np.testing.assert_array_equal(served["is_noisy"], scores < np.asarray(info["class_thresholds"])[labels])
    wrong = labels != true
    assert roc_auc_score(~wrong, scores) > roc_auc_score(~wrong, p_first) - 0.01
