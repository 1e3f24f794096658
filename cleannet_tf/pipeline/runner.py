"""The pipeline's steps as library functions of (config, workdir), where each writes, and when one is complete.

    train_classifier (weighting none) -> WORKDIR/classifier/   (run_train_classifier)
    extract -> WORKDIR/features/                            (pipeline/extract.py)
    refs    -> WORKDIR/references.npz                       (run_refs)
    train   -> WORKDIR/cleannet/                            (pipeline/train.py)
    verify  -> WORKDIR/verify/                              (pipeline/verify.py)
    weighted_classifiers -> WORKDIR/classifier_<w>/         (run_train_classifier, classifier.after_verify)
    export  -> WORKDIR/saved_models/                        (pipeline/export.py)

Each step reads what the earlier ones wrote to WORKDIR. `run_step` (here) runs one step (every step command and
cleannet-run go through it) under the workdir lock and ends by writing its DONE record,
WORKDIR/done/<record>.json: the config fields the step depends on (STEP_FIELDS) and their hash, the DONE ids of
the records it read from (its inputs), the files it produced, and the time. A step is complete only when its
record matches the current config and inputs (`records.staleness`); a step run again with other settings first removes
the outputs made with the old ones (an interrupted step with the same settings resumes from them instead).
WORKDIR/config.<record>.json is the config of the outputs a DONE record describes.
Imports everything below `cli`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

import ml_collections
import tensorflow as tf
from absl import logging

from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline import lock as workdir_lock_lib
from cleannet_tf.pipeline.records import (
    begin_step,
    files_under,
    finish_step,
    forget,
    note_unrecorded_workdir,
    record_name,
    save_config,
    skip_reason,
    staleness,
    weighted_classifiers,
    with_weighting,
)
from cleannet_tf.pipeline.steps import BY_NAME, NEEDS_VERIFICATION, STEPS
from cleannet_tf.pipeline.table import load_table, missing_verification
from cleannet_tf.pipeline.workdir import (
    classifier_output_dir,
    cleannet_dir,
    export_dir,
    features_dir,
    references_path,
    verify_dir,
)
from cleannet_tf.training import distribute


def command_line(command: str) -> str:
    """"cleannet-run --config=... --workdir=..." for the lock file: the command and this process's flags."""
    return " ".join([f"cleannet-{command.replace('_', '-')}", *sys.argv[1:]])[:500]



def _is_chief_process(config: ml_collections.ConfigDict) -> bool:
    """False on the non-chief workers of a multi_worker run (TF_CONFIG), which write nothing to WORKDIR."""
    if config.runtime.strategy != "multi_worker" or not os.environ.get("TF_CONFIG"):
        return True
    tf_config = json.loads(os.environ["TF_CONFIG"])
    task = tf_config.get("task", {})
    if "chief" in tf_config.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and int(task.get("index", 0)) == 0



def start_command(config: ml_collections.ConfigDict, workdir: str, command: str, *, lock: bool = True) -> None:
    """A command's start: takes the workdir lock for the whole process (cleaning temp litter of killed runs).

    cleannet-run, cleannet-demo and cleannet-export also write WORKDIR/config.<command>.json now; the other step
    commands go through run_step, which writes config.<step>.json when the step finishes (so it describes the
    outputs).
    Raises:
        workdir_lock_lib.WorkdirBusyError: another process holds the lock (the message names it).
    """
    if lock and _is_chief_process(config):
        workdir_lock_lib.acquire(workdir, command_line(command))
    else:
        os.makedirs(workdir, exist_ok=True)
    if command not in STEPS or command == "export":
        save_config(config, os.path.join(workdir, f"config.{command}.json"))



def run_step(step: str, config: ml_collections.ConfigDict, workdir: str, *,
             table: data_table.LabelTable | None = None, strategy: tf.distribute.Strategy | None = None,
             export_to: str | None = None, extract_task: tuple[int, int] = (0, 1)) -> str:
    """Runs one step under the workdir lock and records it; returns one line saying what it did.

    extract_task: (task index, number of tasks) of a multi-host extraction worker; with more than one task the
    workers share WORKDIR, so none takes the lock or writes the DONE record (the next run records the step).

    train_classifier trains the classifier of config.classifier.weighting. An interrupted step resumes from its
    outputs; one whose last run had other settings starts over. export_to: cleannet-export's --export_dir
    (a folder other than WORKDIR/saved_models gets no DONE record).
    """
    if step not in STEPS:
        raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")
    chief = (strategy is None or distribute.is_chief(strategy)) and not (step == "extract" and extract_task[1] > 1)
    with workdir_lock_lib.locked(workdir, command_line(step)) if chief else contextlib.nullcontext():
        recorded = chief and not (step == "extract" and config.data.features) and (
            step != "export" or export_to is None or os.path.abspath(export_to) == os.path.abspath(export_dir(workdir)))
        if recorded:
            note_unrecorded_workdir(workdir)
        if step == "weighted_classifiers":
            return _run_weighted_classifiers(config, workdir, table=table, strategy=strategy, recorded=recorded)
        name = record_name(step, config)
        if recorded:
            begin_step(name, config, workdir)
        status, outputs = _run(step, config, workdir, table=table, strategy=strategy,
                               export_to=export_to or export_dir(workdir), extract_task=extract_task)
        if recorded:
            finish_step(name, config, workdir, outputs)
        return status



def _run(step: str, config: ml_collections.ConfigDict, workdir: str, *, table, strategy,
         export_to: str, extract_task: tuple[int, int] = (0, 1)) -> tuple[str, list[str]]:
    """Runs the step's library function (steps.py's table): (status line, the files it produced)."""
    if step not in BY_NAME:
        raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")
    function = BY_NAME[step].load()
    if step == "train_classifier":
        result = function(config, workdir, table=table, strategy=strategy)
        accuracy = result["test_accuracy"]
        return (f"{result['epochs']} epochs on the noisy labels, test accuracy " +
                (f"{accuracy:.3f}" if accuracy is not None else "n/a (no test split)"),
                files_under(classifier_output_dir(workdir, config.classifier.weighting)))
    if step == "extract":
        task_index, num_tasks = extract_task
        stats = function(config, workdir, table=table, strategy=strategy, task_index=task_index, num_tasks=num_tasks)
        if config.data.features:
            return "skipped: precomputed features (data.features)", []
        return (f"{stats['images']} images, {stats['images_per_second']:.0f} images/s",
                files_under(features_dir(workdir)))
    if step == "refs":
        reference_sets = function(config, workdir, table=table)
        return ("{} classes x {} references x {} dims".format(*reference_sets.references.shape),
                [references_path(workdir)])
    if step == "train":
        result = function(config, workdir, table=table, strategy=strategy)
        rate = result["samples_per_second"]
        return (f"{result['steps']} steps, best at {result['best_step']}, "
                + (f"{rate:.0f} samples/s" if rate is not None else "no step left to train"),
                files_under(cleannet_dir(workdir)))
    if step == "verify":
        result = function(config, workdir, table=table)
        forget("plan", workdir)  # its outputs in verify/ are replaced
        return (f"threshold {result['threshold']:.3f}, {result['n_flagged']} of {result['n_images']} images flagged",
                files_under(verify_dir(workdir)))
    if step == "plan":
        result = function(config, workdir, table=table)
        forget("verify", workdir)
        plan = result["plan"]
        return (f"nothing verified yet: {result['n_images']} images ranked (uncalibrated), {plan['rows']} to verify "
                f"({plan['val']} val, {plan['train']} train) in verify/to_verify.tsv", files_under(verify_dir(workdir)))
    if step == "export":
        result = function(config, workdir, export_to, table=table, max_pixels=config.input.max_pixels)
        return (f"{result['verifier']}, {result['classifier']}",
                files_under(result["verifier"], result["classifier"], result["models_config"]))
    raise ValueError(f"Unknown step {step!r}; expected one of {STEPS}")



def _run_weighted_classifiers(config, workdir, *, table, strategy, recorded: bool) -> str:
    """Each classifier of classifier.after_verify not yet complete (each with its own record), then the step's."""
    if recorded:
        begin_step("weighted_classifiers", config, workdir)
    accuracies, outputs = [], []
    for weighting in weighted_classifiers(config):
        weighted = with_weighting(config, weighting)
        name = record_name("train_classifier", weighted)
        reason = staleness(name, weighted, workdir) if recorded else "not recorded"
        if reason:
            logging.info("%s: %s; training it.", name, reason)
            if recorded:
                begin_step(name, weighted, workdir)
            _, produced = _run("train_classifier", weighted, workdir, table=table, strategy=strategy, export_to="")
            if recorded:
                finish_step(name, weighted, workdir, produced)
        directory = classifier_output_dir(workdir, weighting)
        outputs += files_under(directory)
        with open(os.path.join(directory, "metrics.json")) as f:
            accuracy = json.load(f)["test_accuracy"]
        accuracies.append(f"{weighting} {accuracy:.3f}" if accuracy is not None else f"{weighting} n/a")
    if recorded:
        finish_step("weighted_classifiers", config, workdir, outputs)
    return "test accuracy " + ", ".join(accuracies)



def run_steps(config: ml_collections.ConfigDict, workdir: str, *, table: data_table.LabelTable | None = None,
              strategy: tf.distribute.Strategy | None = None, steps=STEPS) -> dict[str, str]:
    """cleannet-run: runs `steps` in order under the workdir lock, skipping those complete for `config`.

    A step runs again when its DONE record is missing (never run, or interrupted: it resumes) or describes
    other settings or inputs (it starts over, and so do the steps after it, whose inputs it replaces).
    With nothing verified yet (table.py missing_verification), the steps that need verified rows
    are skipped and the plan step runs; otherwise the plan step is left out (no line).
    Returns:
        step -> one line saying what it did ("already complete" when skipped).
    """

    unknown = [step for step in steps if step not in STEPS]
    if unknown:
        raise ValueError(f"Unknown step {unknown[0]!r}; expected one of {STEPS}")
    done = {}
    with workdir_lock_lib.locked(workdir, command_line("run")):
        note_unrecorded_workdir(workdir)
        table = table if table is not None else load_table(config, workdir)
        cold = missing_verification(table) if "plan" in steps else None
        for step in steps:
            if step == "plan" and not cold:
                continue
            # The first classifier makes the features: unweighted, whatever classifier.weighting says.
            step_config = with_weighting(config, "none") if step == "train_classifier" else config
            reason = skip_reason(step, config) or (
                f"skipped: nothing verified yet ({cold}): verify the plan, then run again"
                if cold and step in NEEDS_VERIFICATION else None)
            stale = None if reason else staleness(record_name(step, step_config), step_config, workdir)
            if reason:
                done[step] = reason
            elif stale is None:
                done[step] = "already complete"
            else:
                logging.info("%s: %s; running it.", step, stale)
                done[step] = run_step(step, step_config, workdir, table=table, strategy=strategy)
                if stale != "not run yet":
                    done[step] += f" (ran again: {stale})"
            logging.info("%s: %s", step, done[step])
    return done
