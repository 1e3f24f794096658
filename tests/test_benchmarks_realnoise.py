"""benchmarks/realnoise.py end to end on a tiny Food-101N layout made here, with precomputed features."""

import os
import re
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [f"c{i}" for i in range(6)]
METHODS = ["no detection", "cleanlab self-confidence", "cleanlab find_label_issues", "kNN label agreement k=10",
           "neighbour vote (SimiFeat-style)", "its vote rule", "class-centroid cosine", "CleanNet mode=paper",
           "CleanNet mode=stacked, signals=class_mean_margin (config)", "stacked, signals=cleannet_cosine",
           "same CleanNet, margin score", "stacked: class-mean margin + neighbour signals",
           "stacked: CleanNet + class-mean + neighbour signals"]


def write_release(root: str, seed: int = 0) -> tuple[str, dict]:
    """6 classes x 60 images, 25% wrong labels, 2 classes held out; features (16-d) clustered by true class."""
    rng = np.random.default_rng(seed)
    n = 360
    true = np.repeat(np.arange(6), 60)
    noisy = np.where(rng.random(n) < 0.25, (true + rng.integers(1, 6, n)) % 6, true)
    keys = [f"{CLASSES[c]}/i{i:04d}.jpg" for i, c in enumerate(noisy)]
    order = rng.permutation(n)
    train_rows, val_rows = order[:90], order[90:180]
    meta = os.path.join(root, "meta")
    os.makedirs(meta)
    for key in keys:
        os.makedirs(os.path.join(root, "images", os.path.dirname(key)), exist_ok=True)
        open(os.path.join(root, "images", key), "wb").close()  # never decoded: the features are given

    def write(name, lines):
        with open(os.path.join(meta, name), "w") as f:
            f.write("\n".join(lines) + "\n")

    write("classes.txt", ["class_name", *CLASSES])
    write("imagelist.tsv", ["class_name/key", *keys])
    for name, rows in (("verified_train.tsv", train_rows), ("verified_val.tsv", val_rows)):
        write(name, ["class_name/key.jpg\tverification_label", *(f"{keys[i]}\t{int(noisy[i] == true[i])}"
                                                                for i in rows)])
    write("classes_heldout_2.txt", ["class_name\tkeep", *(f"{c}\t{int(i < 4)}" for i, c in enumerate(CLASSES))])
    centres = rng.normal(0, 1, (6, 16))
    features = np.maximum(centres[true] + 0.8 * rng.normal(0, 1, (n, 16)), 0).astype(np.float32)
    path = os.path.join(os.path.dirname(root), "features.npz")
    np.savez(path, keys=np.array(keys), features=features)
    held = noisy[val_rows] >= 4
    wrong = noisy[val_rows] != true[val_rows]
    return path, {"V": wrong[~held].mean(), "H": wrong[held].mean()}


def test_realnoise_benchmark_prints_every_method(tmp_path):
    root = str(tmp_path / "release")
    features, noise = write_release(root)
    command = [sys.executable, "-m", "benchmarks.realnoise", f"--root={root}", f"--features={features}",
               "--steps=20", "--config.train.batch_size=16", "--config.refs.num_references=4",
               "--config.refs.n_init=1", "--vote_rounds=3", "--vote_dim=8", f"--json={tmp_path / 'rows.json'}"]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout[result.stdout.index("| method"):]
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    for method in METHODS:
        assert any(name.startswith(method) for name in rows), (method, list(rows))
    cells = {name: [cell.strip() for cell in line.strip("|").split("|")[1:]] for name, line in rows.items()}
    for name, (error, precision, recall, f1, auc, seconds) in cells.items():
        values = [float(v) for cell in (error, precision, recall, f1, auc) for v in re.findall(r"\d\.\d+", cell)]
        assert all(0.0 <= v <= 1.0 for v in values), (name, values)
        assert float(seconds) >= 0
    # No detection calls every label right: its error is the share of wrong labels, its recall 0.
    error_v, error_h = (float(v) for v in cells["no detection"][0].split(" / "))
    assert abs(error_v - noise["V"]) < 1e-3 and abs(error_h - noise["H"]) < 1e-3
    assert cells["no detection"][2] == "0.000 / 0.000"
    # On features clustered by the true class, neighbour signals rank wrong labels below right ones.
    knn = next(v for k, v in cells.items() if k.startswith("kNN label agreement"))
    assert all(float(v) > 0.7 for v in knn[4].split(" / ")), knn
    assert os.path.exists(tmp_path / "rows.json")
