"""The pipeline's steps, in order: one table of what each runs, reads, writes and depends on.

    name                  function (module:function)            inputs (records read)           outputs
    train_classifier      classifier:run_train_classifier       -                               classifier/
    extract               extract:run_extract                   train_classifier (weights=classifier)  features/
    refs                  refs:run_refs                         extract                         references.npz
    plan                  cold_start:run_plan                   extract                         verify/ (cold start)
    train                 train:run_train                       refs, extract                   cleannet/
    verify                verify:run_verify                     train, refs, extract            verify/
    weighted_classifiers  classifier:run_train_classifier       train_classifier_<w> per w      classifier_<w>/
    export                export:export_all                     verify, train_classifier, ...   saved_models/

`inputs` is every record a step may read; records.py drops those the config makes moot (no extract with
data.features, train_classifier as extract's input only with model.weights=classifier). `fields` are the config
fields its outputs depend on ("section.*": all of a section; "-field": but not that one); left out everywhere:
runtime.*, logging and checkpoint cadence, extract.batch_size, input.parallel_calls, data.check_images, which
cannot change what a step writes. `needs_verification`: the steps cleannet-run skips while nothing is verified
(then the plan step ranks the images and plans what to verify; with verified rows the plan step is left out).
Functions are named, not imported (runner.py imports them when it runs one), so records.py reads this table
without loading TensorFlow.
Imports `pipeline.workdir`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

from cleannet_tf.pipeline.workdir import (
    classifier_dir,
    cleannet_dir,
    export_dir,
    features_dir,
    references_path,
    verify_dir,
)


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    function: str  # "module:function" under cleannet_tf.pipeline, called with (config, workdir, ...)
    inputs: tuple[str, ...]
    outputs: Callable[[str], list[str]]  # workdir -> the paths the step writes (a rerun with other settings
    fields: tuple[str, ...]  # removes them first: see records.begin_step)
    needs_verification: bool = False  # skipped by cleannet-run while nothing is verified (the plan step runs)

    def load(self) -> Callable:
        """The step's library function."""
        module, name = self.function.split(":")
        return getattr(importlib.import_module(f"cleannet_tf.pipeline.{module}"), name)


_DATA = ("seed", "data.*", "-data.check_images")

TABLE = (
    Step("train_classifier", "classifier:run_train_classifier", (), lambda workdir: [classifier_dir(workdir)],
         (*_DATA, "model.backbone", "model.image_height", "model.image_width", "model.feature_dim",
          "input.resize", "input.augment", "input.max_pixels", "classifier.*", "-classifier.after_verify")),
    Step("extract", "extract:run_extract", ("train_classifier",), lambda workdir: [features_dir(workdir)],
         (*_DATA, "model.*", "input.resize", "input.max_pixels", "extract.shard_size")),
    Step("refs", "refs:run_refs", ("extract",), lambda workdir: [references_path(workdir)],
         (*_DATA, "refs.*")),
    # nothing verified yet: ranks and plans into verify/ (replaced whole, as verify's)
    Step("plan", "cold_start:run_plan", ("extract",), lambda workdir: [], (*_DATA, "verify.plan_fraction")),
    Step("train", "train:run_train", ("refs", "extract"), lambda workdir: [cleannet_dir(workdir)],
         (*_DATA, "cleannet.*", "loss.*", "train.*", "-train.checkpoint_every", "-train.log_every"),
         needs_verification=True),
    # verify replaces its folder whole (no removal first)
    Step("verify", "verify:run_verify", ("train", "refs", "extract"), lambda workdir: [],
         (*_DATA, "cleannet.mode", "cleannet.calibration_fraction", "verify.*", "-verify.plan_fraction"),
         needs_verification=True),
    # one train_classifier_<w> record per weighting of classifier.after_verify, each with its own folder
    Step("weighted_classifiers", "classifier:run_train_classifier", (), lambda workdir: [],
         ("classifier.after_verify",), needs_verification=True),
    # each export adds versions (no removal first)
    Step("export", "export:export_all", ("verify", "train_classifier", "weighted_classifiers", "extract"),
         lambda workdir: [], (*_DATA, "model.*", "input.resize", "input.max_pixels", "classifier.after_verify"),
         needs_verification=True),
)
STEPS = tuple(step.name for step in TABLE)
BY_NAME = {step.name: step for step in TABLE}
STEP_FIELDS = {step.name: step.fields for step in TABLE}
# Fields added since DONE records began (41cd3c4), each with the value that means what the older versions did:
# a record leaves a field at that value out, so the records those versions wrote still match.
ADDED_FIELDS = {"classifier.train_from": "all", "classifier.frozen_cache": "auto", "classifier.holdout_fraction": 0.0,
                "classifier.patience": 0, "classifier.mixed_precision": "auto", "verify.operating_point": "threshold",
                "classifier.select_by": "accuracy"}
NEEDS_VERIFICATION = tuple(step.name for step in TABLE if step.needs_verification)
VERIFY_OUTPUTS = ("scores.tsv", "metrics.json", "verifier.keras", "to_verify.tsv", "report.html")  # in verify/
OUTPUT_DIRS = (features_dir, references_path, cleannet_dir, verify_dir, export_dir)  # what marks an older workdir
