"""Benchmark: the two operating points of cleannet-verify (verify.operating_point) on real label noise.

For each release (benchmarks/realnoise.py's --dataset/--seeds/--releases/--features/--config/--steps flags), the
config's CleanNet and verifier are fitted once (detection/fit.py fit_verifier, operating_point="calibrated",
which also returns the threshold), and the verified_val rows, verified (V) and held-out (H) classes apart, are
measured three ways: no detection; "threshold" (score < the threshold of the lowest error on the threshold rows);
"P(wrong) > 1/2, no prior shift" (the stacked P(label correct) below 1/2 in every class, the calibration rows'
prior); "calibrated" (score < info["class_thresholds"][label]: P(label wrong) > 1/2 with each class's prior
re-estimated by EM on its unverified rows).

    python -m benchmarks.operating_point --config=configs/realnoise.py --dataset=cifar10n_aggre \\
        --seeds=0,1,2,11,12 --releases=RELEASES --features=FEATURES/effl0_features_{release}.npz --steps=1 \\
        --json=aggre.json
    python -m benchmarks.operating_point --from_json=aggre.json,worst.json     # the table again

configs/realnoise.py's signals (the linear classifier's) do not read CleanNet's output, so --steps=1 gives the
same scores as the full training.
"""

from __future__ import annotations

import json
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import app, logging  # noqa: E402

from benchmarks import realnoise  # noqa: E402  (its flags: --config, --dataset, --seeds, --json, ...)
from cleannet_tf.detection import operating_point, verifier  # noqa: E402
from cleannet_tf.detection.fit import fit_verifier  # noqa: E402
from cleannet_tf.pipeline.artifacts import load_training_inputs  # noqa: E402
from cleannet_tf.pipeline.refs import run_refs  # noqa: E402
from cleannet_tf.pipeline.table import load_table  # noqa: E402
from cleannet_tf.training import cleannet as cleannet_training  # noqa: E402
from cleannet_tf.training import metrics  # noqa: E402

FIGURES = ("error", "precision", "recall", "f1")


def release_rows(config, name: str, root: str, seed: int) -> list[dict]:
    """Rows {release, point, tag, error, precision, recall, f1, n} of one release (see the module docstring)."""
    import keras

    config = realnoise.release_config(config, name, root, seed)
    with tempfile.TemporaryDirectory(prefix="operating-point-") as workdir:
        table = load_table(config, workdir)
        run_refs(config, workdir, table=table, progress=False)
        training, reference_sets = load_training_inputs(config, workdir, table, for_training=True)
        cleannet_training.train_cleannet(training, reference_sets, config, workdir, progress=False)
        cleannet = keras.saving.load_model(os.path.join(workdir, "model.keras"))
        data, _ = load_training_inputs(config, workdir, table)
    calibration = cleannet_training.calibration_classes(table, config.cleannet.calibration_fraction, seed)
    model, info = fit_verifier(cleannet, data, reference_sets, mode=config.cleannet.mode,
                               class_mean_keep=config.verify.class_mean_keep, calibration_classes=calibration,
                               signals=tuple(config.verify.signals), classifier_rounds=config.verify.classifier_rounds,
                               operating_point="calibrated", seed=seed)
    scores = verifier.own_label_scores(model, data.features, data.labels)["score"]
    class_thresholds = np.asarray(info["class_thresholds"])
    held = data.heldout_classes[data.labels[data.validation]]
    rows = []
    unshifted = operating_point.class_thresholds(np.zeros(1), scoring=info["scoring"])[0]  # stacked: P = 1/2
    for point, thresholds in (("no detection", np.full(len(scores), -np.inf)),
                              ("threshold", np.full(len(scores), info["threshold"])),
                              ("P(wrong) > 1/2, no prior shift", np.full(len(scores), unshifted)),
                              ("calibrated", class_thresholds[data.labels])):
        for tag, mask in (("V", ~held), ("H", held)):
            val = data.validation[mask]
            m = metrics.detection_metrics(scores[val], data.verification[val], thresholds[val])
            rows.append({"release": name, "point": point, "tag": tag, "n": m["n"],
                         **{figure: m[figure] for figure in FIGURES}})
    logging.warning("%s: threshold %.3f, class thresholds %s, prior noise rates %s (calibration rows %.3f)", name,
                    info["threshold"], np.round(class_thresholds, 3), info["prior_noise_rates"],
                    info["calibration_noise_rate"])
    return rows


POINTS = ("no detection", "threshold", "P(wrong) > 1/2, no prior shift", "calibrated")


def markdown_table(rows: list[dict]) -> str:
    """One line per release: held-out (H) error / precision / recall / F1 of each operating point, V errors;
    then the mean over the releases of each dataset."""
    def cell(found: list[dict], point: str, tag: str) -> str:
        mine = [r for r in found if r["point"] == point and r["tag"] == tag]
        figures = FIGURES[:1] if point == "no detection" or tag == "V" else FIGURES
        return " / ".join(f"{np.mean([r[f] for r in mine]):.3f}" for f in figures)

    lines = ["| release (H: error / precision / recall / F1) | " + " | ".join(POINTS) + " | V error, each |",
             "|---" * (len(POINTS) + 2) + "|"]
    releases = list(dict.fromkeys(row["release"] for row in rows))
    groups = [(name, [r for r in rows if r["release"] == name]) for name in releases]
    for dataset in dict.fromkeys(name.rsplit("_s", 1)[0] for name in releases):
        mine = [r for r in rows if r["release"].rsplit("_s", 1)[0] == dataset]
        groups.append((f"{dataset}, mean of {len({r['release'] for r in mine})}", mine))
    for name, found in groups:
        lines.append(f"| {name} | " + " | ".join(cell(found, p, "H") for p in POINTS) + " | "
                     + " / ".join(cell(found, p, "V") for p in POINTS) + " |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    if realnoise._FROM_JSON.value:
        rows = []
        for path in realnoise._FROM_JSON.value:
            with open(path) as f:
                rows += json.load(f)
        print(markdown_table(rows))
        return
    rows = []
    for name, root, seed in realnoise.release_roots():
        rows += release_rows(realnoise._CONFIG.value, name, root, seed)
        if realnoise._JSON.value:
            partial = f"{realnoise._JSON.value}.{os.getpid()}.partial"
            with open(partial, "w") as f:
                json.dump(rows, f, indent=1)
            os.replace(partial, realnoise._JSON.value)
    print(markdown_table(rows))


if __name__ == "__main__":
    app.run(main)
