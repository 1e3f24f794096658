"""load_table(config, workdir): the dataset `config.data` names, read once for every step.

Generates the demo data first when asked, applies held-out lists and reviewed labels, and checks
now what the steps will need of the data. Imports `config`, `data`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from absl import logging

from cleannet_tf.data.clothing1m import (
    CLOTHING1M_CLEAN_KV,
    CLOTHING1M_CLEAN_LISTS,
    CLOTHING1M_NOISY_KV,
    CLOTHING1M_NOISY_TRAIN,
    read_clothing1m,
)
from cleannet_tf.data.folder import read_folder
from cleannet_tf.data.food101n import apply_extra_verified, read_food101n
from cleannet_tf.data.layout import LOOKED_FOR, detect_format
from cleannet_tf.data.reading import MAX_EXAMPLES, DatasetError
from cleannet_tf.data.table import (
    FORMATS,
    SPLIT_TEST,
    SPLIT_TRAIN,
    SPLIT_VAL,
    LabelTable,
    apply_heldout,
    read_heldout_list,
)
from cleannet_tf.data.tsv import read_csv, read_tsv
from cleannet_tf.pipeline.steps import NEEDS_VERIFICATION
from cleannet_tf.pipeline.workdir import extra_verified_paths, resolve_data_root, review_files


def load_table(config, workdir: str, *, steps: Sequence[str] = ()) -> LabelTable:
    """Reads the dataset `config.data` names (generating the demo data first if asked).

    Dispatches on `config.data.format` ("auto": the layout `data.layout.detect_format` finds at the root, named
    in one log line); root from `workdir.resolve_data_root`; applies
    `config.data.heldout_list` (any format), or for the demo
    `ROOT/meta/classes_heldout_<demo_heldout>.txt` when demo_heldout > 0. With
    data.demo set, a data.root that holds something other than a demo dataset is the
    user's own data: it is read as it is (format from its layout unless data.format names
    another than auto or food101n) with the demo's settings, and the log says so.

    Args:
        config: the full cleannet_tf config (`ml_collections.ConfigDict`).
        workdir: the run's work directory (demo data goes to WORKDIR/demo_data when
            data.root is empty).
        steps: pipeline steps about to run (pipeline.STEPS names); what they need of the
            data is checked now, before any training (`check_for_steps`).
    Raises:
        DatasetError: bad input, naming the file and line, or the data lack what `steps` need.
    """

    data = config.data
    root = resolve_data_root(config, workdir)
    data_format = data.format
    heldout_list = data.heldout_list
    if data.demo:
        from cleannet_tf.data import demo as demo_data_lib  # lazy: only the demo needs it

        if data.root and demo_data_lib.holds_demo_dataset(root) is False:
            if data_format in ("auto", "food101n"):
                data_format = _detect_users_format(root, data.demo)
            logging.warning("data.root %s is not a demo dataset: using it as a %s dataset with the demo's settings "
                            "(data.demo=%r generates data only in a new or empty folder; --config.data.demo= "
                            "turns that off).", root, data_format, data.demo)
        else:
            if data_format not in ("auto", "food101n"):
                raise DatasetError(f"data.demo={data.demo!r} writes its data to {root} in the food101n layout, but "
                                   f"data.format is {data_format!r}: set --config.data.format=food101n (or auto), or "
                                   "point data.root at your own dataset.")
            data_format = "food101n"
            if not os.path.exists(os.path.join(root, "meta", "classes.txt")):
                logging.info("Generating the %r demo dataset under %s.", data.demo, root)
            # Returns at once when the dataset is there; adds a missing held-out list.
            demo_data_lib.generate_demo_dataset(root, kind=data.demo, noise_rate=data.demo_noise_rate,
                                            images_per_class=data.demo_images_per_class or None,
                                            heldout=data.demo_heldout, seed=config.seed)
            if not heldout_list and data.demo_heldout > 0:
                heldout_list = os.path.join(root, "meta", f"classes_heldout_{data.demo_heldout}.txt")
    elif data_format == "auto":
        data_format, found = detect_format(root)
        logging.info("data.format=auto: %s is %s: reading it as data.format=%s.", root, found, data_format)

    if data_format == "food101n":
        table = read_food101n(root, test_root=data.test_root or None, check_images=data.check_images)
    elif data_format == "clothing1m":
        table = read_clothing1m(root, check_images=data.check_images)
    elif data_format in ("tsv", "csv"):
        if os.path.isdir(root):
            raise DatasetError(f"data.root {root} is a folder; for data.format={data_format} it is the "
                               f".{data_format} file itself (image paths relative to the file's folder).")
        read = read_tsv if data_format == "tsv" else read_csv
        table = read(root, check_images=data.check_images)
    elif data_format == "folder":
        table = read_folder(root)
    else:
        raise ValueError(f"config.data.format: must be one of {', '.join(FORMATS)}. Received: {data_format!r}")
    if heldout_list:
        heldout_path = os.path.abspath(os.path.expanduser(heldout_list))
        table = apply_heldout(table, read_heldout_list(heldout_path, table.class_names))
    for path in extra_verified_paths(config, workdir):  # a verified_val.tsv: verified validation rows
        table = apply_extra_verified(table, path, split="val" if os.path.basename(path) == "verified_val.tsv"
                                     else "train")
    logging.info("Dataset %s (%s): %s", root, data_format, table.summary())
    if steps:
        if "plan" in steps and missing_verification(table):  # cleannet-run: the cold start (pipeline/cold_start.py)
            logging.info("Nothing verified yet (%s): the steps that need verified rows wait for the plan's answers.",
                         missing_verification(table))
            steps = [step for step in steps if step not in NEEDS_VERIFICATION]
        check_for_steps(table, config, steps, data_format=data_format, root=root)
    return table



def _detect_users_format(root: str, demo: str) -> str:
    """The layout of a user's dataset at a data.root that holds no demo data (logged)."""
    try:
        data_format, found = detect_format(root)
    except DatasetError:
        raise DatasetError(f"data.root {root} is not a demo dataset, nor a dataset in a layout this package reads "
                           f"(looked for {LOOKED_FOR}). Point data.root at your dataset, or at a new or empty folder "
                           f"for the {demo!r} demo data.") from None
    logging.info("data.format=auto: %s is %s: reading it as data.format=%s.", root, found, data_format)
    return data_format



def _verification_sources(data_format: str, root: str) -> tuple[str, str]:
    """Where the layout keeps its verified training and validation labels, in its own words."""
    if data_format == "food101n":
        return (f"{os.path.join(root, 'meta', 'verified_train.tsv')} (class/key.jpg<TAB>1 if the label is right, "
                "0 if wrong)", f"{os.path.join(root, 'meta', 'verified_val.tsv')} (class/key.jpg<TAB>1 or 0)")
    if data_format == "clothing1m":
        return (f"the images of {CLOTHING1M_NOISY_TRAIN} or {CLOTHING1M_CLEAN_LISTS[0]} under {root} with both a "
                f"noisy ({CLOTHING1M_NOISY_KV}) and a clean ({CLOTHING1M_CLEAN_KV}) label",
                f"the images of {CLOTHING1M_CLEAN_LISTS[1]} under {root} with a noisy label in "
                f"{CLOTHING1M_NOISY_KV}")
    if data_format == "folder":
        return ("a class folder has none: cleannet-run plans what to verify and cleannet-review writes the answers "
                "(WORKDIR/review/verified_train.tsv), or name a file in data.extra_verified (header, then "
                "class/image<TAB>1|0)", "a class folder has none: cleannet-run plans what to verify and "
                "cleannet-review writes the answers (WORKDIR/review/verified_val.tsv), or name a file called "
                "verified_val.tsv in data.extra_verified")
    return (f"{root}: rows with split=train (or no split) and a `verified` value (1 = label right, 0 = wrong)",
            f"{root}: rows with split=val and a `verified` value (1 = label right, 0 = wrong)")



def missing_verification(table: LabelTable) -> str | None:
    """Why the table cannot train CleanNet and choose a threshold yet (no verified training rows, or no verified
    validation rows, in classes that are not held out), or None when it can."""
    usable = (table.verification >= 0) & ~table.heldout_classes[table.labels]
    missing = [what for what, split in (("training", SPLIT_TRAIN), ("validation", SPLIT_VAL))
               if not (usable & (table.split == split)).any()]
    return f"no verified {' and no verified '.join(missing)} rows" if missing else None


def check_for_steps(table: LabelTable, config, steps: Sequence[str], *, data_format: str, root: str) -> None:
    """Checks now what the pipeline's `steps` will need of the data, so a run fails before training, not after.

    refs, train: every class has images in the noisy pool (train/val). train: verified training rows in
    classes that are not held out. verify: verified validation rows in such classes; cleannet.mode=stacked:
    of both kinds, and its calibration classes' verified rows of both kinds.

    Raises:
        DatasetError: what is missing, where the format keeps it, and what to add.
    """
    steps = set(steps)
    pool = table.split != SPLIT_TEST
    held = table.heldout_classes[table.labels]
    n_held = int(table.heldout_classes.sum())
    held_note = (f" in classes that are not held out ({n_held} of {table.num_classes} classes are, by "
                 "data.heldout_list)") if n_held else ""
    train_source, val_source = _verification_sources(data_format, root)
    if steps & {"refs", "train"}:
        counts = np.bincount(table.labels[pool], minlength=table.num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            named = ", ".join(repr(table.class_names[i]) for i in empty[:MAX_EXAMPLES])
            raise DatasetError(f"{root}: {len(empty)} class(es) have no training or validation image, only test "
                               f"rows: {named}. Every class needs images in the noisy pool: its reference set is "
                               "built from them.")
    if "train" in steps:
        verified_train = (table.verification >= 0) & (table.split == SPLIT_TRAIN) & ~held
        if not verified_train.any():
            raise DatasetError(f"No verified training rows{held_note}: CleanNet learns what a wrong label looks like "
                               f"from them. Add some: {train_source}.")
    if "verify" in steps:
        val = table.split == SPLIT_VAL
        if data_format in ("tsv", "csv") and not val.any():
            raise DatasetError(f"{root} has no validation rows: add a `split` column with values train/val/test, or "
                               "mark verified rows with split=val (cleannet-verify chooses its threshold on verified "
                               "validation rows).")
        verified_val = val & (table.verification >= 0) & ~held
        if not verified_val.any():
            raise DatasetError(f"No verified validation rows{held_note}: cleannet-verify chooses its threshold on "
                               f"them. Add some: {val_source}.")
        if config.cleannet.mode == "stacked":
            kinds = table.verification[verified_val]
            n_right, n_wrong = int((kinds == 1).sum()), int((kinds == 0).sum())
            if not (n_right and n_wrong):
                raise DatasetError(f"cleannet.mode=stacked fits its score on verified validation rows of both kinds, "
                                   f"but they are {n_right} labelled right and {n_wrong} wrong ({val_source}): "
                                   "verify rows of both kinds, or set --config.cleannet.mode=robust.")
            uses_calibration = any(signal.startswith("cleannet_") for signal in config.verify.signals)
            if config.cleannet.calibration_fraction > 0 and uses_calibration:  # CleanNet's signals are fitted there
                from cleannet_tf.training.cleannet import calibration_classes  # lazy: TensorFlow

                calibration = calibration_classes(table, config.cleannet.calibration_fraction, config.seed)
                fit = pool & (table.verification >= 0) & calibration[table.labels]
                if calibration.any() and len(np.unique(table.verification[fit])) < 2:
                    raise DatasetError(
                        f"cleannet.calibration_fraction={config.cleannet.calibration_fraction}: the "
                        f"{int(calibration.sum())} calibration classes' verified rows are all of one kind (label "
                        "right, or wrong): raise cleannet.calibration_fraction, verify rows of both kinds, or set "
                        "it to 0.")


def train_rows_chosen_by_score(table: LabelTable, config, workdir: str) -> bool:
    """Whether verified training rows came from cleannet-review's WORKDIR/review/verified_train.tsv (applied by
    data.merge_review): rows a plan or the proposals chose by score, not a random sample (detection/fit.py
    fit_verifier chosen_by_score)."""
    path = review_files(workdir)[0]
    if path not in extra_verified_paths(config, workdir):
        return False
    with open(path, encoding="utf-8") as f:
        keys = {line.split("\t", 1)[0] for line in f.read().splitlines()[1:] if line.strip()}
    trained = table.keys[(table.verification >= 0) & (table.split == SPLIT_TRAIN)]
    return bool(keys.intersection(trained.tolist()))
