"""Benchmark: the classifier-signal candidates of the real-photos default, on the same features and protocol.

Each candidate is a (P,) score of every pool image from the linear classifier of the noisy labels (or a softmax
head, or neighbour structure on top), combined by the stacked logistic regression (stacking.StackedDetector)
fitted on the verified classes' verified_train rows; benchmarks/realnoise.py's `evaluate` measures it
(threshold on those rows, error on verified_val rows, verified / held-out classes apart). The candidates:

    ridge l2=L                 detection_signals.linear_classifier, score and margin of the own label
    refit ...                  verify.classifier_rounds: refit with rows weighted by the stacked P(label correct)
                               (detection_signals.classifier_refit_weights: verified_train rows by their verification),
                               or without that override, or keeping only rows with P >= 0.5
    leave-one-out ridge        the exact leave-one-out scores of the ridge (hat-matrix diagonal)
    + knn agreement / + knn mean score / smoothed scores / per-class standardised / z-scored features
    softmax head ce / gce      a linear softmax head on the features (Adam, batch 256), cross-entropy, GCE (q 0.7)
                               or label smoothing 0.3
    ORACLE                     with --truth: the ridge fitted on the TRUE labels, out of fold (5 folds: no row is
                               scored by a fit that saw it), stacked the same way: the error of a linear detector
                               on these features that knew every other image's true label (a bound, not a method)

    python -m benchmarks.realnoise_signals --dataset=cifar10n_worst --seeds=0,1,2 --releases=RELEASES \\
        --features=FEATURES/effl0_features_{release}.npz

Same flags as benchmarks/realnoise.py (its --config, --dataset, --seeds, --releases, --features); --softmax=false
skips the TensorFlow heads (the slow part); --truth=RELEASES/{release}.truth.tsv adds the oracle row.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from benchmarks import realnoise, truth_tsv  # noqa: E402  (realnoise: its flags)
from cleannet_tf.detection import signals as detection_signals  # noqa: E402
from cleannet_tf.detection import stacking
from cleannet_tf.features import neighbours  # noqa: E402
from cleannet_tf.pipeline.artifacts import open_features
from cleannet_tf.pipeline.table import load_table  # noqa: E402
from cleannet_tf.training import pool

_SOFTMAX = flags.DEFINE_bool("softmax", True, "Also the softmax heads (TensorFlow, slow).")
_TRUTH = flags.DEFINE_string("truth", "", "With the true labels, {release}.truth.tsv beside each release (e.g. "
                             "RELEASES/{release}.truth.tsv): also the out-of-fold ridge of the true labels.")


def own_and_margin(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(len(labels))
    others = scores.copy()
    others[rows, labels] = -np.inf
    return scores[rows, labels], scores[rows, labels] - others.max(axis=1)


def softmax_head(x: np.ndarray, labels: np.ndarray, num_classes: int, *, loss: str, epochs: int = 10,
                 smoothing: float = 0.0, q: float = 0.7, seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, C) logits of a linear softmax head trained on the noisy labels."""
    import tensorflow as tf

    tf.random.set_seed(seed)
    w = tf.Variable(tf.zeros((x.shape[1], num_classes)))
    b = tf.Variable(tf.zeros(num_classes))
    optimizer = tf.keras.optimizers.Adam(1e-2)
    targets = np.eye(num_classes, dtype=np.float32)[labels] * (1 - smoothing) + smoothing / num_classes

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = xb @ w + b
            if loss == "gce":
                p = tf.reduce_sum(yb * tf.nn.softmax(logits), axis=1)
                per_row = (1 - tf.pow(p + 1e-8, q)) / q
            else:
                per_row = -tf.reduce_sum(yb * tf.nn.log_softmax(logits), axis=1)
            value = tf.reduce_mean(per_row) + 1e-4 * tf.reduce_sum(w * w)
        optimizer.apply_gradients(zip(tape.gradient(value, [w, b]), [w, b], strict=True))

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), 256):
            rows = order[start:start + 256]
            step(tf.constant(x[rows]), tf.constant(targets[rows]))
    return x @ w.numpy() + b.numpy()


def candidates(data: pool.TrainingData, seed: int, true_labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """(P,) stacked P(label correct) of every candidate; true_labels (P,): also the oracle."""
    num_classes = len(data.class_names)
    x = detection_signals.log_normalize(data.features).astype(np.float32)
    labels = data.labels
    fit = data.verified_train[~data.heldout_classes[labels[data.verified_train]]]
    verification = data.verification[fit]

    def stacked(*columns):
        signals = np.stack(columns, axis=1)
        return stacking.StackedDetector(seed=seed).fit(signals[fit], verification).score(signals)

    def classifier_scores(l2=1.0, sample_weights=None, features=x):
        w, b = detection_signals.linear_classifier(features, labels, num_classes=num_classes, l2=l2,
                                           sample_weights=sample_weights)
        return features @ w + b

    out = {}
    base = classifier_scores()
    out["ridge l2=1 (classifier_rounds=0)"] = first = stacked(*own_and_margin(base, labels))
    for l2 in (0.3, 3.0, 10.0, 30.0):
        out[f"ridge l2={l2:g}"] = stacked(*own_and_margin(classifier_scores(l2), labels))
    for name, rounds, rule in (("refit P, verified rows as verified (classifier_rounds)", 3, "soft"),
                               ("refit P, no verified override", 1, "soft_unverified"),
                               ("refit keeping P >= 0.5, verified rows as verified", 2, "hard")):
        p = first
        for r in range(rounds):
            if rule == "soft_unverified":
                weights = p
            else:
                weights = detection_signals.classifier_refit_weights(p if rule == "soft" else (p >= 0.5), fit,
                                                                     verification)
            p = stacked(*own_and_margin(classifier_scores(sample_weights=weights), labels))
            out[f"{name}, {r + 1} round{'s' * (r > 0)}"] = p
    xb = np.concatenate([x, np.ones((len(x), 1), np.float32)], axis=1).astype(np.float64)
    inverse = np.linalg.inv(xb.T @ xb + np.eye(xb.shape[1]))
    leverage = np.einsum("ij,jk,ik->i", xb, inverse, xb)
    targets = 2.0 * np.eye(num_classes)[labels] - 1.0
    loo = (base - leverage[:, None] * targets) / (1 - leverage[:, None])
    out["leave-one-out ridge"] = stacked(*own_and_margin(loo, labels))
    own, margin = own_and_margin(base, labels)
    nearest, _ = neighbours.nearest_neighbours(x, 10)
    out["ridge + knn agreement k=10"] = stacked(own, margin, (labels[nearest] == labels[:, None]).mean(axis=1))
    out["ridge + knn mean own score"] = stacked(own, margin, base[nearest, labels[:, None]].mean(axis=1))
    out["ridge, scores smoothed over 10 neighbours (1/2 own)"] = stacked(
        *own_and_margin(0.5 * base + 0.5 * base[nearest].mean(axis=1), labels))
    median = np.array([np.median(base[labels == c, c]) for c in range(num_classes)])
    mad = np.array([1.4826 * np.median(np.abs(base[labels == c, c] - median[c])) for c in range(num_classes)])
    out["ridge, scores standardised per class (median / MAD)"] = stacked(
        *own_and_margin((base - median) / mad, labels))
    z = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    out["ridge on z-scored features, l2=1000"] = stacked(*own_and_margin(classifier_scores(1000.0, features=z),
                                                                         labels))
    if _SOFTMAX.value:
        for name, kwargs in (("softmax head, cross-entropy", {"loss": "ce"}),
                             ("softmax head, label smoothing 0.3", {"loss": "ce", "smoothing": 0.3}),
                             ("softmax head, GCE q=0.7", {"loss": "gce"})):
            logits = softmax_head(10 * x, labels, num_classes, seed=seed, **kwargs)
            out[name] = stacked(*own_and_margin(logits, labels))
    if true_labels is not None:
        folds = np.random.default_rng(seed).integers(0, 5, len(labels))
        out_of_fold = np.empty_like(base)
        for fold in range(5):
            fit_rows = folds != fold
            w, b = detection_signals.linear_classifier(x[fit_rows], true_labels[fit_rows], num_classes=num_classes)
            out_of_fold[~fit_rows] = x[~fit_rows] @ w + b
        out["ORACLE: ridge of the true labels, out of fold (a bound)"] = stacked(*own_and_margin(out_of_fold, labels))
    return out


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    rows = []
    for name, root, seed in realnoise.release_roots():
        config = realnoise.release_config(realnoise._CONFIG.value, name, root, seed)
        table = load_table(config, os.path.join("/tmp", "realnoise-unused"))
        features = open_features(config, "", table)
        data = pool.prepare_training_data(table, features, table.class_names, features.feature_dim,
                                          np.ones(table.num_classes))
        true_labels = None
        if _TRUTH.value:
            truth = truth_tsv.read_truth(_TRUTH.value.format(release=name))
            index = {class_name: c for c, class_name in enumerate(table.class_names)}
            true_labels = np.array([index[truth[key]] for key in table.keys[data.table_rows]])
        print(f"\n== {name}", flush=True)
        for method, scores in candidates(data, seed, true_labels).items():
            row = {"release": name, "seed": seed, "method": method, "seconds": 0.0,
                   **realnoise.evaluate(data, scores)}
            rows.append(row)
            print(f"  {method:<62} error V {row['error V']:.3f} H {row['error H']:.3f}  AUC H {row['roc_auc H']:.3f}",
                  flush=True)
    print(realnoise.markdown_table(rows))


if __name__ == "__main__":
    app.run(main)
