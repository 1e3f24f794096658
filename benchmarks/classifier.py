"""Benchmark: classifier test accuracy with none / soft / hard CleanNet weights, and with clean labels.

Two settings. Releases (--release): on Food-101N-layout releases with their `data.features` .npz and the true
labels beside them (made for CIFAR-10N by make_realnoise.py: RELEASE.truth.tsv), for each release runs
cleannet-verify's steps (refs, train, verify: the --config's mode; configs/realnoise.py for real photos) in
--workdirs (a finished one is reused), then trains the softmax head on the frozen features four times: noisy
labels unweighted, soft (P(label correct)) and hard weights from verify's scores.tsv (verified labels first),
and the true labels (the ceiling). Prints test accuracy on the release's clean test split, the share of the gap
each weighting recovers, whether any weighting falls below unweighted, and the noise-rate estimates of
verify's metrics.json (calibrated probabilities) against the truth, per release and as mean over seeds:

    python -m benchmarks.classifier --config=configs/realnoise.py --release=/work/scratch/realnoise/{dataset}_s{seed} \
        --reverify --features=/work/scratch/realnoise/effl0_features_{dataset}_s{seed}.npz \
        --datasets=cifar10n_worst,cifar10n_aggre --seeds=0,1,2 --workdirs=/tmp/cleannet_realnoise/{dataset}_s{seed}

Demo workdir (no --release): on a finished demo workdir (`cleannet-demo`, which wrote verify/scores.tsv),
trains the demo's classifier four times with the same config and seed: on the noisy labels unweighted, weighted
soft (scores.tsv's weight_soft) and hard
(1[s >= threshold]) by cleannet-verify's scores (verified labels first), and on the true labels (the demo
knows them: the ceiling). Prints test accuracy on the clean test images and the share of the clean-label gain
each weighting recovers (also soft weights followed by fine-tuning on the images verified as correct),
(acc_w - acc_none) / (acc_clean - acc_none); the paper recovers 47% with soft
weights on Food-101N with 3.2% of images verified.

    python benchmarks/classifier.py --workdir=/tmp/cleannet_demo --training_seeds=0,1,2

Classifiers go to --output_dir (default WORKDIR/classifier_benchmark/<name>/), not to the pipeline's folders;
a finished one is reused.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import truth_tsv
from cleannet_tf import atomic_io, pipeline
from cleannet_tf import config as config_lib
from cleannet_tf.data import demo
from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline import scores_tsv
from cleannet_tf.pipeline.artifacts import classifier_weights
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import resolve_data_root, verify_dir
from cleannet_tf.training import classifier

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Pipeline config file.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/cleannet_demo", "A finished cleannet-demo workdir.")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 2, "Epochs of fine-tuning on verified-correct images "
                                        "after the soft-weighted ones (classifier.finetune_epochs).")
_SEEDS = flags.DEFINE_list("training_seeds", ["0"], "Training seeds (initialisation, data order); every row is "
                           "trained once per seed and the mean and range are printed. The data stay the workdir's.")
_OUTPUT = flags.DEFINE_string("output_dir", "", "Where the classifiers go (default WORKDIR/classifier_benchmark).")
_RELEASE = flags.DEFINE_string("release", "", "Release root pattern ({dataset}, {seed} filled in): releases mode.")
_FEATURES = flags.DEFINE_string("features", "", "data.features .npz pattern of a release ({dataset}, {seed}).")
_TRUTH = flags.DEFINE_string("truth", "{release}.truth.tsv", "True labels (key, noisy, true) of a release.")
_DATASETS = flags.DEFINE_list("datasets", ["cifar10n_worst", "cifar10n_aggre"], "Values of {dataset}.")
_RELEASE_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Values of {seed} (a release per seed; every run "
                                   "trains with the config's seed).")
_REVERIFY = flags.DEFINE_bool("reverify", False, "Run cleannet-verify again in every release (the scores of "
                              "this code; it always runs again on a scores.tsv without p_correct).")
_WORKDIRS = flags.DEFINE_string("workdirs", "/tmp/cleannet_realnoise/{dataset}_s{seed}", "A release's workdir.")

ROWS = ("none", "soft", "hard", "true labels")


def release_config(base: ml_collections.ConfigDict, root: str, features: str):
    """`base` on a Food-101N-layout release root with its features (its one classes_heldout_*.txt, if any)."""
    config = base.copy_and_resolve_references()
    config.data.demo, config.data.format, config.data.root, config.data.features = "", "food101n", root, features
    heldout = sorted(glob.glob(os.path.join(root, "meta", "classes_heldout_*.txt")))
    config.data.heldout_list = heldout[0] if heldout else ""
    config.classifier.after_verify = ()
    return config_lib.validate(config)


def run_release(config, workdir: str, truth_path: str) -> dict:
    """Verify (reused when complete), the four classifiers, and the noise rates against the truth of one release."""
    table = load_table(config, workdir)
    pipeline.run_steps(config, workdir, table=table, steps=("refs", "train", "verify"))
    scores_path = os.path.join(verify_dir(workdir), "scores.tsv")
    if _REVERIFY.value or np.isnan(scores_tsv.read_scores_tsv(scores_path).p_correct).all():
        pipeline.run_step("verify", config, workdir, table=table)
    truth = truth_tsv.read_truth(truth_path)
    index = {name: c for c, name in enumerate(table.class_names)}
    true_labels = np.array([index[truth[key]] if key in truth else label
                            for key, label in zip(table.keys, table.labels, strict=True)], table.labels.dtype)
    pool = table.split != data_table.SPLIT_TEST
    runs = {"none": (table, None), "soft": (table, classifier_weights(table, workdir, "soft")),
            "hard": (table, classifier_weights(table, workdir, "hard")),
            "true labels": (dataclasses.replace(table, labels=true_labels), None)}
    result = {"accuracy": {}, "mean_weight": {}}
    for name, (run_table, weights) in runs.items():
        output_dir = os.path.join(workdir, "classifier_benchmark", name.replace(" ", "_"))
        result["accuracy"][name] = train_once(run_table, weights, config, config.seed, output_dir)
        result["mean_weight"][name] = 1.0 if weights is None else float(weights[pool].mean())
    with open(os.path.join(verify_dir(workdir), "metrics.json")) as f:
        verify_metrics = json.load(f)
    wrong = (true_labels != table.labels) & pool
    per_class_true = np.bincount(table.labels[pool], weights=wrong[pool], minlength=table.num_classes) / np.maximum(
        np.bincount(table.labels[pool], minlength=table.num_classes), 1)
    per_class = verify_metrics["per_class"]
    estimate = np.array([per_class[name]["noise_rate_estimate"] for name in table.class_names])
    flagged = np.array([per_class[name]["flagged_share"] for name in table.class_names])
    result["noise"] = {"true": float(wrong[pool].mean()), "estimate": verify_metrics["noise_rate_estimate"],
                       "flagged_share": verify_metrics["flagged_share"],
                       "per_class_mae": float(np.abs(estimate - per_class_true).mean()),
                       "per_class_max": float(np.abs(estimate - per_class_true).max()),
                       "flagged_per_class_mae": float(np.abs(flagged - per_class_true).mean()),
                       "per_class_mae_vh": tuple(float(np.abs(estimate - per_class_true)[mask].mean()) for mask in
                                                 (~table.heldout_classes, table.heldout_classes)),
                       "per_class": {name: (float(per_class_true[c]), float(estimate[c]))
                                     for c, name in enumerate(table.class_names)}}
    result["detection_error"] = (verify_metrics["detection_error"], verify_metrics["detection_error_heldout"])
    return result


def main_releases() -> None:
    """The releases setting (see the module docstring): one table per dataset over seeds."""
    seeds = [int(seed) for seed in _RELEASE_SEEDS.value]
    for dataset in _DATASETS.value:
        results = []
        print(f"\n== {dataset}, seeds {', '.join(map(str, seeds))} ==", flush=True)
        print(f"{'seed':>4} " + " ".join(f"{name:>11}" for name in ROWS) + f" {'soft gap':>9} {'hard gap':>9} "
              f"{'>= none':>8} {'mean w soft':>11} {'hard':>6}  {'det. error V / H':>16}")
        for seed in seeds:
            fill = {"dataset": dataset, "seed": seed}
            root = _RELEASE.value.format(**fill)
            fill["release"] = root
            config = release_config(_CONFIG.value, root, _FEATURES.value.format(**fill))
            start = time.perf_counter()
            result = run_release(config, _WORKDIRS.value.format(**fill), _TRUTH.value.format(**fill))
            accuracy = result["accuracy"]
            gap = accuracy["true labels"] - accuracy["none"]
            shares = {name: (accuracy[name] - accuracy["none"]) / gap if gap > 0 else float("nan")
                      for name in ("soft", "hard")}
            never_below = all(accuracy[name] >= accuracy["none"] for name in ("soft", "hard"))
            results.append((result, shares, never_below))
            print(f"{seed:>4} " + " ".join(f"{accuracy[name]:>11.3f}" for name in ROWS) +
                  f" {shares['soft']:>9.0%} {shares['hard']:>9.0%} {'yes' if never_below else 'NO':>8} "
                  f"{result['mean_weight']['soft']:>11.3f} {result['mean_weight']['hard']:>6.3f}  "
                  f"{result['detection_error'][0]:>7.3f} / {result['detection_error'][1]:.3f}"
                  f"   ({time.perf_counter() - start:.0f} s)", flush=True)
        mean = {name: np.mean([r["accuracy"][name] for r, _, _ in results]) for name in ROWS}
        gap = mean["true labels"] - mean["none"]
        print(f"{'mean':>4} " + " ".join(f"{mean[name]:>11.3f}" for name in ROWS) +
              "".join(f" {(mean[name] - mean['none']) / gap if gap > 0 else float('nan'):>9.0%}"
                      for name in ("soft", "hard")) +
              f" {'yes' if all(ok for _, _, ok in results) else 'NO':>8}")
        print(f"\nnoise rate, {dataset}: {'seed':>4} {'true':>6} {'estimate':>9} {'error':>7} "
              f"{'share flagged':>14} {'per-class |error| mean / max':>29} {'(share flagged: mean)':>22} "
              f"{'per-class mean |error| V / H':>29}")
        for seed, (result, _, _) in zip(seeds, results, strict=True):
            noise = result["noise"]
            print(f"{'':>{len(dataset) + 13}}{seed:>4} {noise['true']:>6.1%} {noise['estimate']:>9.1%} "
                  f"{noise['estimate'] - noise['true']:>+7.1%} {noise['flagged_share']:>14.1%} "
                  f"{noise['per_class_mae']:>20.1%} / {noise['per_class_max']:.1%} "
                  f"{noise['flagged_per_class_mae']:>22.1%} {noise['per_class_mae_vh'][0]:>20.1%} / "
                  f"{noise['per_class_mae_vh'][1]:.1%}")
        for seed, (result, _, _) in zip(seeds, results, strict=True):
            print(f"  per class (true / estimate), seed {seed}: " + ", ".join(
                f"{name} {t:.0%}/{e:.0%}" for name, (t, e) in result["noise"]["per_class"].items()))


def main(argv) -> None:
    del argv
    if _RELEASE.value:
        main_releases()
        return


    config, workdir = _CONFIG.value, _WORKDIR.value
    output_root = _OUTPUT.value or os.path.join(workdir, "classifier_benchmark")
    table = load_table(config, workdir)
    truth = demo.read_demo_truth(resolve_data_root(config, workdir))
    true_labels = np.array([truth.get(key, label) for key, label in zip(table.keys, table.labels, strict=True)])
    pool = table.split != data_table.SPLIT_TEST
    print(f"{int(pool.sum())} training images, {np.mean(true_labels[pool] != table.labels[pool]):.1%} wrong labels, "
          f"{int((table.verification[pool] >= 0).sum())} verified; {int((~pool).sum())} clean test images")
    finetuned = config.copy_and_resolve_references()
    finetuned.classifier.finetune_epochs = _FINETUNE_EPOCHS.value
    soft = classifier_weights(table, workdir, "soft")
    runs = {
        "none": (table, None, config),
        "soft": (table, soft, config),
        "hard": (table, classifier_weights(table, workdir, "hard"), config),
        f"soft + {_FINETUNE_EPOCHS.value} epochs fine-tuning": (table, soft, finetuned),
        "clean labels": (dataclasses.replace(table, labels=true_labels.astype(table.labels.dtype)), None, config),
    }
    seeds = [int(seed) for seed in _SEEDS.value]
    accuracy = {}
    print(f"\n{'training labels / weights':<28} {'test accuracy':>13} {'range':>13} {'mean weight':>12} "
          f"{'seconds':>8}   (training seeds {', '.join(map(str, seeds))})")
    for name, (run_table, weights, run_config) in runs.items():
        start = time.perf_counter()
        accuracy[name] = [train_once(run_table, weights, run_config, seed,
                                     os.path.join(output_root, name.replace(" ", "_"), f"seed_{seed}"))
                          for seed in seeds]
        mean_weight = 1.0 if weights is None else float(weights[pool].mean())
        print(f"{name:<28} {np.mean(accuracy[name]):>13.3f} {min(accuracy[name]):>6.3f}-{max(accuracy[name]):.3f} "
              f"{mean_weight:>12.3f} {time.perf_counter() - start:>8.0f}", flush=True)
    gain = np.mean(accuracy["clean labels"]) - np.mean(accuracy["none"])
    for name in [name for name in runs if name not in ("none", "clean labels")]:
        share = (np.mean(accuracy[name]) - np.mean(accuracy["none"])) / gain if gain > 0 else float("nan")
        print(f"share of the clean-label gain recovered by {name}: {share:.0%}")


def train_once(table, weights, config, seed: int, output_dir: str) -> float:
    """Test accuracy of one classifier (reused from output_dir when it finished there with the same weights)."""
    metrics_path = os.path.join(output_dir, "metrics.json")
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            metrics = json.load(f)
        pool = table.split != data_table.SPLIT_TEST
        trained = pool if weights is None else pool & (weights > 0)  # hard weights: mean 1, the count tells
        mean_weight = 1.0 if weights is None else float(weights[trained].mean())
        if (metrics.get("mean_weight") is not None and abs(metrics["mean_weight"] - mean_weight) < 1e-6
                and metrics.get("n_train") == int(trained.sum())):
            return metrics["test_accuracy"]
        atomic_io.remove_path(output_dir)  # made with other weights
    config = config.copy_and_resolve_references()
    config.seed = seed
    _, metrics = classifier.train_classifier(table, config, output_dir, sample_weights=weights,
                                                 initial_weights="random", progress=False)
    return metrics["test_accuracy"]


if __name__ == "__main__":
    app.run(main)
