"""Every WORKDIR path: one function per step's folder or file (the layout a c90b6d9 workdir already has).

    config.<step>.json  demo_data/  classifier[_<weighting>]/  frozen_cache/  features/  references.npz  cleannet/
    verify/  saved_models/  done/  review/

Imports nothing of the package but `config`.
"""

from __future__ import annotations

import os


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
