"""Shared by the demo dataset tests: generating a small one and reading its files back."""

import hashlib
import os

from cleannet_tf.data import demo as demo_data_lib

SMALL = {"digits": 40, "two_digits": 3}  # images per class in most tests: fast


def _generate(root, **kwargs):
    settings = {"kind": "digits", "images_per_class": 40, "test_images_per_class": 5, **kwargs}
    return demo_data_lib.generate_demo_dataset(str(root), **settings)


def _lines(root, name):
    with open(os.path.join(root, "meta", name), encoding="utf-8") as f:
        return f.read().splitlines()


def _truth_rows(root):
    header, *lines = _lines(root, "truth.tsv")
    return [dict(zip(header.split("\t"), line.split("\t"), strict=True)) for line in lines]


def _pool_rows(root):
    return [r for r in _truth_rows(root) if not r["key"].startswith("test/")]


def _verified(root, name):
    header, *lines = _lines(root, name)
    assert header == "class_name/key\tverification_label"
    return dict(line.split("\t") for line in lines)


def _tree_digest(root):
    """relative path -> sha256 of every file under root."""
    digests = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digests[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digests
