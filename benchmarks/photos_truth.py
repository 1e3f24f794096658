"""The true-label copy of a realnoise release (benchmarks/photos_realnoise.py's bound): the same images
(symlinks), every pool image under its true class, every verification label 1."""

from __future__ import annotations

import csv
import os

from cleannet_tf import atomic_io


def read_truth(path: str) -> dict[str, tuple[str, str]]:
    """<release>.truth.tsv (header `key noisy true`) -> {key: (noisy, true)}; key is `class/iNNNNN.jpg`."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0][:3] != ["key", "noisy", "true"]:
        raise ValueError(f"{path}: line 1: expected the header key<TAB>noisy<TAB>true")
    truth = {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) < 3:
            raise ValueError(f"{path}: line {line}: expected 3 columns, got {len(row)}")
        truth[row[0]] = (row[1], row[2])
    return truth


def _true_key(key: str, truth: dict[str, tuple[str, str]]) -> str:
    """`noisy/iNNNNN.jpg` -> `true/iNNNNN.jpg` (keys with or without .jpg)."""
    full = key if key.endswith(".jpg") else key + ".jpg"
    true = truth[full][1]
    return true + "/" + key.split("/", 1)[1]


def make_truth_copy(release: str, truth_tsv: str, dest: str) -> str:
    """Writes the true-label copy of `release` to `dest` (idempotent) and returns `dest`."""
    truth = read_truth(truth_tsv)
    meta = os.path.join(dest, "meta")
    os.makedirs(meta, exist_ok=True)
    for key in truth:
        target = os.path.join(dest, "images", _true_key(key, truth))
        if not os.path.lexists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.path.abspath(os.path.join(release, "images", key)), target)
    if not os.path.lexists(os.path.join(dest, "test")):
        os.symlink(os.path.abspath(os.path.join(release, "test")), os.path.join(dest, "test"))
    for name in ("classes.txt", "test.txt") + tuple(
            n for n in os.listdir(os.path.join(release, "meta")) if n.startswith("classes_heldout")):
        with open(os.path.join(release, "meta", name)) as f:
            atomic_io.write_text(os.path.join(meta, name), f.read())
    with open(os.path.join(release, "meta", "imagelist.tsv")) as f:
        header, *keys = f.read().splitlines()
    atomic_io.write_text(os.path.join(meta, "imagelist.tsv"),
                         "\n".join([header] + [_true_key(k, truth) for k in keys]) + "\n")
    for name in ("verified_train.tsv", "verified_val.tsv"):
        with open(os.path.join(release, "meta", name)) as f:
            header, *rows = f.read().splitlines()
        atomic_io.write_text(os.path.join(meta, name), "\n".join(
            [header] + [_true_key(r.split("\t")[0], truth) + "\t1" for r in rows]) + "\n")
    return dest
