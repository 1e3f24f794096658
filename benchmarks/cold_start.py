"""Benchmark: your own photos with nothing verified: run, answer the plan, run again; against random verification.

A Food-101N-layout release (made by make_realnoise.py, with RELEASE.truth.tsv beside it) is rewritten as a plain
folder of class subfolders (symbolic links, keys `<noisy class>/<image>` as the release's, so its `data.features`
.npz applies) with no verification file. Then, with the same config and features:

    plan     cleannet-run (cold start: ranks, writes verify/to_verify.tsv); the plan's rows answered from the truth
             as a reviewer would (WORKDIR/review/verified_train.tsv, verified_val.tsv by the plan's split column);
             cleannet-run again (calibrated)
    random   the release itself (data.root=RELEASE, its random verified_train.tsv / verified_val.tsv: 5% + 5% of
             the pool; no held-out list); one cleannet-run

Figures: the detection error over the whole pool (every image the run did not have verified, `noisy` of
scores.tsv against the truth), the error the run reports on its own verified val rows (metrics.json
detection_error), how many labels each used. Target: plan error <= random error, and |reported - pool| <= 0.02.

    nice python -m benchmarks.cold_start --release=/work/scratch/realnoise/cifar10n_worst_s0 \\
        --features=/work/scratch/frozen/effl0_features_cifar10n_worst_s0.npz --work=/work/scratch/coldstart/bench

Run from the repository root (configs/realnoise.py). Each run's log goes to WORK/<name>.log; --runs=plan or
random makes one of them (the figures need both in WORK).

Measured on cifar10n_worst_s0 (20k images, 40% wrong labels, EfficientNet-Lite0 ImageNet features):
    plan    verified   400  pool error 0.1435 (19600 rows)  reported 0.1495 on 301 val rows
    random  verified  2000  pool error 0.1454 (18000 rows)  reported 0.1330 on 1000 val rows
and on configs/photos.py's fine-tuned features (benchmarks/store_to_npz.py of its WORKDIR/features):
    plan    verified   400  pool error 0.1573 (19600 rows)  reported 0.1827 on 301 val rows
    random  verified  2000  pool error 0.1557 (18000 rows)  reported 0.1530 on 1000 val rows
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from benchmarks.truth_tsv import read_truth

FLAGS = flags.FLAGS
flags.DEFINE_string("release", None, "Food-101N-layout release with RELEASE.truth.tsv beside it.")
flags.DEFINE_string("features", None, ".npz of the release's features (keys = the release's keys).")
flags.DEFINE_string("work", "/tmp/cold_start_bench", "Folder for the folder dataset and the workdirs.")
flags.DEFINE_string("config", "configs/realnoise.py", "Config file of every run.")
flags.DEFINE_multi_string("set", [], "Extra --config.x=y overrides of every run (e.g. train.steps=600).")
flags.DEFINE_enum("runs", "both", ["both", "plan", "random"], "Which runs to make (figures of both when present).")


def make_folder(release: str, folder: str) -> int:
    """FOLDER/<class>/<image> symbolic links to the release's pool images (imagelist.tsv); returns their count."""
    with open(os.path.join(release, "meta", "imagelist.tsv")) as f:
        keys = [line.strip() for line in f.read().splitlines()[1:] if line.strip()]
    for key in keys:
        link = os.path.join(folder, key)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.join(release, "images", key), link)
    return len(keys)


def run(name: str, root: str, workdir: str) -> None:
    """One cleannet-run on `root` (log: WORK/<name>.log); raises when it fails."""
    command = [sys.executable, "-m", "cleannet_tf.cli.run", f"--config={FLAGS.config}", f"--workdir={workdir}",
               f"--config.data.root={root}", "--config.data.heldout_list=",
               f"--config.data.features={FLAGS.features}", *[f"--config.{item}" for item in FLAGS.set]]
    with open(os.path.join(FLAGS.work, f"{name}.log"), "a") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)


def answer_plan(workdir: str, truth: dict[str, str]) -> dict[str, int]:
    """Answers verify/to_verify.tsv from the truth into review/verified_<split>.tsv; returns rows per split."""
    with open(os.path.join(workdir, "verify", "to_verify.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        split_column = header.index("split")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    answers: dict[str, list[str]] = {"train": [], "val": []}
    for fields in rows:
        key = fields[0]
        answers[fields[split_column]].append(f"{key}\t{int(truth[key] == key.split('/')[0])}")
    os.makedirs(os.path.join(workdir, "review"), exist_ok=True)
    for split, lines in answers.items():
        with open(os.path.join(workdir, "review", f"verified_{split}.tsv"), "w") as f:
            f.write("\n".join(["class_name/key.jpg\tverification_label", *lines]) + "\n")
    return {split: len(lines) for split, lines in answers.items()}


def verified_keys(folder: str) -> set[str]:
    """The keys of FOLDER/verified_train.tsv and verified_val.tsv."""
    keys = set()
    for split in ("train", "val"):
        with open(os.path.join(folder, f"verified_{split}.tsv")) as f:
            keys |= {line.split("\t")[0] for line in f.read().splitlines()[1:] if line.strip()}
    return keys


def figures(workdir: str, verified_folder: str, truth: dict[str, str]) -> dict:
    """Whole-pool error (rows not verified) of scores.tsv's `noisy`, and what metrics.json reports."""
    verified = verified_keys(verified_folder)
    errors = n = 0
    with open(os.path.join(workdir, "verify", "scores.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        noisy_column = header.index("noisy")
        for line in f:
            fields = line.rstrip("\n").split("\t")
            key = fields[0]
            if key in verified:
                continue
            wrong = truth[key] != key.split("/")[0]
            errors += int(fields[noisy_column] == "1") != wrong
            n += 1
    with open(os.path.join(workdir, "verify", "metrics.json")) as f:
        metrics = json.load(f)
    return {"pool_error": errors / n, "pool_rows": n, "verified": len(verified),
            "reported_error": metrics["detection_error"], "n_val": metrics["n_val"],
            "threshold": metrics["threshold"], "threshold_rows": metrics.get("threshold_rows"),
            "calibrated": metrics.get("calibrated", True)}


def main(argv):
    del argv
    os.makedirs(FLAGS.work, exist_ok=True)
    truth = read_truth(f"{FLAGS.release.rstrip('/')}.truth.tsv")
    folder = os.path.join(FLAGS.work, "folder")
    print(f"folder: {make_folder(FLAGS.release, folder)} images under {folder}", flush=True)

    plan, random = os.path.join(FLAGS.work, "plan"), os.path.join(FLAGS.work, "random")
    if FLAGS.runs in ("both", "plan"):
        run("plan_cold", folder, plan)
        with open(os.path.join(plan, "verify", "metrics.json")) as f:
            cold = json.load(f)
        print(f"cold start: calibrated={cold.get('calibrated')} detection_error={cold.get('detection_error')}",
              flush=True)
        print(f"plan answered: {answer_plan(plan, truth)}", flush=True)
        run("plan_verified", folder, plan)
    if FLAGS.runs in ("both", "random"):
        run("random", FLAGS.release, random)
    if not all(os.path.exists(os.path.join(w, "verify", "scores.tsv")) for w in (plan, random)):
        return
    results = {"plan": figures(plan, os.path.join(plan, "review"), truth),
               "random": figures(random, os.path.join(FLAGS.release, "meta"), truth)}
    for name, result in results.items():
        print(f"{name:<7} verified {result['verified']:>5}  pool error {result['pool_error']:.4f} "
              f"({result['pool_rows']} rows)  reported {result['reported_error']:.4f} on {result['n_val']} val rows  "
              f"threshold {result['threshold']:.4f} ({result['threshold_rows']})")
    plan_result, random_result = results["plan"], results["random"]
    print(f"target: plan pool error <= random: {plan_result['pool_error'] <= random_result['pool_error']} "
          f"(by {random_result['pool_error'] - plan_result['pool_error']:+.4f}); |reported - pool| = "
          f"{abs(plan_result['reported_error'] - plan_result['pool_error']):.4f} (<= 0.02: "
          f"{abs(plan_result['reported_error'] - plan_result['pool_error']) <= 0.02})")
    with open(os.path.join(FLAGS.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    flags.mark_flags_as_required(["release", "features"])
    app.run(main)
