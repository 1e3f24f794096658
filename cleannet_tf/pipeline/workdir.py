"""Every WORKDIR path: one function per step's folder or file (the layout a c90b6d9 workdir already has).

    config.<step>.json  demo_data/  classifier[_<weighting>]/  frozen_cache/  features/  references.npz  cleannet/
    verify/  saved_models/  done/  review/

Imports nothing of the package.
"""

from __future__ import annotations

import os

import ml_collections

# The files of cleannet-review under WORKDIR/review/ that data.merge_review applies (verification labels of
# training rows, verified_train.tsv format). The review app's validation file joins this list when the
# readers apply validation rows.
REVIEW_FILE_NAMES = ("verified_train.tsv", "verified_val.tsv")  # training rows; verified validation rows


def features_dir(workdir: str) -> str:
    return os.path.join(workdir, "features")


def references_path(workdir: str) -> str:
    """Where cleannet-refs writes: WORKDIR/references.npz."""
    return os.path.join(workdir, "references.npz")


def cleannet_dir(workdir: str) -> str:
    return os.path.join(workdir, "cleannet")


def verify_dir(workdir: str) -> str:
    return os.path.join(workdir, "verify")


def verifier_path(workdir: str) -> str:
    return os.path.join(verify_dir(workdir), "verifier.keras")


def classifier_dir(workdir: str) -> str:
    return os.path.join(workdir, "classifier")


def classifier_output_dir(workdir: str, weighting: str) -> str:
    """WORKDIR/classifier for the unweighted classifier (the feature extractor), classifier_<weighting> otherwise."""
    return classifier_dir(workdir) + ("" if weighting == "none" else f"_{weighting}")


def frozen_cache_dir(workdir: str) -> str:
    """WORKDIR/frozen_cache: the frozen layers' outputs a fine-tune from a block on reads (training/finetune.py),
    one folder per setting, shared by the unweighted and weighted classifiers."""
    return os.path.join(workdir, "frozen_cache")


def export_dir(workdir: str) -> str:
    """Where cleannet-run and cleannet-demo export: WORKDIR/saved_models."""
    return os.path.join(workdir, "saved_models")


def done_dir(workdir: str) -> str:
    """WORKDIR/done: one DONE record per finished step (its absence marks a workdir of an older version)."""
    return os.path.join(workdir, "done")


def resolve_data_root(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Returns the dataset root: data.root, or WORKDIR/demo_data for the demo."""
    if config.data.root:
        return os.path.abspath(os.path.expanduser(config.data.root))
    return os.path.join(os.path.abspath(workdir), "demo_data")


def review_dir(workdir: str) -> str:
    """WORKDIR/review: cleannet-review's decisions, its retrain config and log."""
    return os.path.join(os.path.abspath(workdir), "review")


def review_files(workdir: str) -> list[str]:
    """Where cleannet-review saves a person's decisions (REVIEW_FILE_NAMES under WORKDIR/review)."""
    return [os.path.join(review_dir(workdir), name) for name in REVIEW_FILE_NAMES]


def extra_verified_paths(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The verification files applied to the table: the review files that exist (data.merge_review), then
    data.extra_verified (absolute paths, each once)."""
    paths = [path for path in review_files(workdir) if os.path.exists(path)] if config.data.merge_review else []
    for path in config.data.extra_verified:
        path = os.path.abspath(os.path.expanduser(path))
        if path not in paths:
            paths.append(path)
    return paths
