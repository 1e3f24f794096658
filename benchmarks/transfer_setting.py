"""benchmarks/transfer.py's two settings (heldout, all) on a demo workdir, and how every method is scored.
"""

from __future__ import annotations

import copy
import dataclasses
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from cleannet_tf.data import demo
from cleannet_tf.data import table as data_table
from cleannet_tf.data.food101n import read_food101n
from cleannet_tf.features import references as references_lib  # noqa: E402
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.pipeline import records
from cleannet_tf.pipeline import table as table_lib
from cleannet_tf.pipeline.artifacts import open_features
from cleannet_tf.pipeline.classifier import run_train_classifier
from cleannet_tf.pipeline.extract import run_extract
from cleannet_tf.pipeline.refs import reference_rows, run_refs
from cleannet_tf.pipeline.workdir import references_path, resolve_data_root
from cleannet_tf.training import metrics
from cleannet_tf.training import pool as training_pool

HELDOUT = 50  # the demo's held-out list



ROBUST_CORE_FRACTION = 0.7  # refs.core_fraction of the library's robust mode (configs/demo.py)



def build_workdir(config, workdir: str) -> None:
    """Runs the demo pipeline's steps before CleanNet, skipping complete ones."""
    table = load_table(config, workdir)
    if not records.step_complete("train_classifier", config, workdir):
        print(f"[build] training the classifier on the noisy labels -> {workdir}/classifier", flush=True)
        run_train_classifier(config, workdir, table=table, progress=False)
    if not records.step_complete("extract", config, workdir):
        print(f"[build] extracting features -> {workdir}/features", flush=True)
        run_extract(config, workdir, table=table, progress=False)
    if not records.step_complete("refs", config, workdir):
        print(f"[build] reference sets -> {workdir}/references.npz", flush=True)
        run_refs(config, workdir, table=table, progress=False)



def load_table(config, workdir: str) -> data_table.LabelTable:
    """load_table; for demo data written by an older generator version, read it as it is."""
    try:
        return table_lib.load_table(config, workdir)
    except ValueError as error:
        if "other parameters" not in str(error):
            raise
        root = resolve_data_root(config, workdir)
        logging.warning("%s was made by another demo-generator version; reading it as it is.", root)
        table = read_food101n(root)
        if config.data.demo_heldout:
            heldout_list = os.path.join(root, "meta", f"classes_heldout_{config.data.demo_heldout}.txt")
            table = data_table.apply_heldout(table, data_table.read_heldout_list(heldout_list, table.class_names))
        return table



@dataclasses.dataclass
class Setting:
    name: str
    config: object
    data: training_pool.TrainingData
    reference_sets: ReferenceSets  # the paper's: k-means on every image of a class (refs.core_fraction = 1)
    core_reference_sets: ReferenceSets  # the library's robust mode: k-means on each class's core
    truth_correct: np.ndarray | None  # (P,) bool: the noisy label equals the true label (demo only)



def reference_sets_for(config, workdir: str, table: data_table.LabelTable, core_fraction: float) -> ReferenceSets:
    """WORKDIR/references.npz when it was built with `core_fraction`, else built here in memory (not saved)."""
    existing = ReferenceSets.load(references_path(workdir))
    if float(existing.metadata.get("core_fraction", 1.0)) == core_fraction:
        return existing
    features = open_features(config, workdir, table)
    refs = config.refs
    return references_lib.build_reference_sets(
        features.gather, table.labels, reference_rows(table, features.valid()), table.class_names,
        num_references=refs.num_references, n_init=refs.n_init, max_iter=refs.max_iter, tol=refs.tol,
        max_samples_per_class=refs.max_samples_per_class, seed=config.seed, core_fraction=core_fraction,
        progress=False)



def load_setting(base_config, workdir: str, name: str, cache: dict) -> Setting:
    config = copy.deepcopy(base_config)
    config.data.demo_heldout = HELDOUT if name == "heldout" else 0
    table = load_table(config, workdir)
    features = open_features(config, workdir, table)
    if "references" not in cache:  # label-free: the same in both settings
        cache["references"] = (reference_sets_for(config, workdir, table, 1.0),
                               reference_sets_for(config, workdir, table, ROBUST_CORE_FRACTION))
    reference_sets, core_reference_sets = cache["references"]
    data = training_pool.prepare_training_data(table, features, reference_sets.class_names,
                                            reference_sets.references.shape[2], reference_sets.counts)
    truth_correct = None
    truth_file = os.path.join(resolve_data_root(config, workdir), "meta", "truth.tsv")
    if os.path.exists(truth_file):
        truth = demo.read_demo_truth(os.path.dirname(os.path.dirname(truth_file)))
        true = np.array([truth.get(key, -1) for key in table.keys[data.table_rows]])
        truth_correct = true == data.labels
    return Setting(name, config, data, reference_sets, core_reference_sets, truth_correct)



def evaluate(scores: np.ndarray | None, setting: Setting, *, flagged: np.ndarray | None = None) -> dict:
    """The protocol on pool scores (P,) (high = label correct), or on a fixed (P,) bool `flagged` decision."""
    data = setting.data
    rows = data.validation
    labels, verification = data.labels[rows], data.verification[rows]
    held = data.heldout_classes[labels]
    verified_train = np.zeros(len(data.labels), bool)
    verified_train[data.verified_train] = True
    result = {}
    if flagged is None:
        threshold, _ = metrics.best_threshold(scores[rows][~held], verification[~held])
        flagged = scores < threshold
        result["threshold"] = threshold
    for tag, mask in (("verified", ~held), ("heldout", held)):
        if not mask.any():
            continue
        wrong = verification[mask] == 0
        result[f"error_{tag}"] = float(np.mean(flagged[rows][mask] != wrong))
        if scores is not None and 0 < wrong.sum() < len(wrong):
            result[f"auc_{tag}"] = float(metrics.detection_metrics(scores[rows][mask], verification[mask],
                                                                   0.0)["roc_auc"])
        if setting.truth_correct is not None:  # every pool image of the group but the fitted (verified) rows
            pool = (data.heldout_classes[data.labels] == (tag == "heldout")) & ~verified_train
            result[f"truth_error_{tag}"] = float(np.mean(flagged[pool] == setting.truth_correct[pool]))
    return result
