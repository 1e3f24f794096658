"""The steps' order and DONE records: WORKDIR/done/<record>.json, what each step depends on, when one is complete.

A record holds the config fields the step depends on (steps.py's table; `select_fields`, `hash_fields`, in the
form older versions recorded: `recorded_form`), the DONE ids of its inputs, the files it produced and the time;
`staleness` compares it with the current config. A workdir with outputs but no done/ runs every step again.
Imports `atomic_io`, `data.layout`, `pipeline.steps`, `pipeline.workdir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.data.layout import detect_format
from cleannet_tf.pipeline.steps import ADDED_FIELDS, BY_NAME, OUTPUT_DIRS, STEP_FIELDS, STEPS
from cleannet_tf.pipeline.workdir import (
    classifier_dir,
    classifier_output_dir,
    done_dir,
    extra_verified_paths,
    resolve_data_root,
    verify_dir,
)


def select_fields(config: ml_collections.ConfigDict, patterns) -> dict[str, Any]:
    """{"section.field": value} of the fields `patterns` name, in schema order.

    A pattern is a field ("train.steps", "seed"), a section ("refs.*"), or "-section.field" to leave one out.
    """
    flat = {}
    for name, value in config.items():
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            flat.update({f"{name}.{field}": inner for field, inner in value.items()})
        else:
            flat[name] = value
    chosen: dict[str, Any] = {}
    for pattern in patterns:
        if pattern.startswith("-"):
            chosen.pop(pattern[1:], None)
        elif pattern.endswith(".*"):
            chosen.update({k: v for k, v in flat.items() if k.startswith(pattern[:-1])})
        elif pattern in flat:
            chosen[pattern] = flat[pattern]
        else:
            raise KeyError(f"config.{pattern}: no such field")
    return chosen


def recorded_form(fields: Mapping[str, Any]) -> dict[str, Any]:
    """`fields` as DONE records hold them: a tuple as its comma string ("soft,hard"), data.extra_verified and
    data.merge_review as the one string they were before ("auto": the review files only; "a,b": those paths),
    steps.ADDED_FIELDS at their older meaning left out."""
    form = {field: ",".join(value) if isinstance(value, (tuple, list)) else value for field, value in fields.items()
            if field not in ADDED_FIELDS or value != ADDED_FIELDS[field]}  # at its older meaning: left out
    if "data.merge_review" in form:
        merge, paths = form.pop("data.merge_review"), form.get("data.extra_verified", "")
        if merge:
            form["data.extra_verified"] = ",".join(filter(None, ["auto", paths]))
    return form


def hash_fields(values: Mapping[str, Any]) -> str:
    """sha256 (hex, 16 digits) of {field: value}: equal exactly when every value is equal."""
    same = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}  # 1.0 == 1
    text = json.dumps(same, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_config(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes the resolved config as JSON (per-process temporary name, then rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_io.write_json(path, config.to_dict(), sort_keys=True)


def weighted_classifiers(config: ml_collections.ConfigDict) -> list[str]:
    """The weightings of classifier.after_verify, as a list."""
    return list(config.classifier.after_verify)


def with_weighting(config: ml_collections.ConfigDict, weighting: str) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.classifier.weighting = weighting
    return config


def _record_path(workdir: str, name: str, *, started: bool = False) -> str:
    return os.path.join(done_dir(workdir), f"{name}.started.json" if started else f"{name}.json")


def record_name(step: str, config: ml_collections.ConfigDict) -> str:
    """The DONE record of `step` under `config`: train_classifier_<w> for a weighted classifier, else `step`."""
    if step == "train_classifier" and config.classifier.weighting != "none":
        return f"train_classifier_{config.classifier.weighting}"
    return step


def _step_of(name: str) -> str:
    return "train_classifier" if name.startswith("train_classifier") else name


def _record_config(name: str, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config record `name` is made with (a classifier record fixes classifier.weighting)."""
    if _step_of(name) != "train_classifier":
        return config
    weighting = name[len("train_classifier_"):] or "none"
    return config if config.classifier.weighting == weighting else with_weighting(config, weighting)


# What a DONE record must hold to be trusted (a started record: the first three); anything else reruns the step.
_RECORD_TYPES = {"config_hash": str, "inputs": dict, "config": dict, "id": str, "outputs": list}


def _load_record(path: str, *, started: bool = False) -> tuple[dict | None, str | None]:
    """(the record at `path`, None); (None, None) when there is none; (None, why) when it cannot be trusted
    (not JSON, truncated, a field missing or of the wrong type)."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"its DONE record {path} is unreadable ({' '.join(str(error).split())})"
    if not isinstance(record, dict):
        return None, f"its DONE record {path} is unreadable (a JSON {type(record).__name__}, not an object)"
    for field, kind in list(_RECORD_TYPES.items())[: 3 if started else None]:
        if not isinstance(record.get(field, {} if field == "config" else None), kind):
            what = "no" if field not in record else f"a {type(record[field]).__name__} as"
            return None, f"its DONE record {path} is partial ({what} {field})"
    if not started and not all(isinstance(output, str) for output in record["outputs"]):
        return None, f"its DONE record {path} is partial (outputs are not paths)"
    return record, None


def read_record(workdir: str, name: str, *, started: bool = False) -> dict | None:
    """WORKDIR/done/<name>.json (or .started.json), or None (also when it is unreadable or partial)."""
    return _load_record(_record_path(workdir, name, started=started), started=started)[0]


def _missing_output(record: dict, workdir: str) -> str | None:
    """The first file `record` lists as an output that is gone, or None."""
    for output in record["outputs"]:
        if not os.path.lexists(os.path.join(workdir, output)):
            return os.path.join(workdir, output)
    return None


def skip_reason(step: str, config: ml_collections.ConfigDict) -> str | None:
    """Why cleannet-run does not run `step` under `config`, or None."""
    if step == "extract" and config.data.features:
        return "skipped: precomputed features (data.features)"
    if step == "export" and config.data.features:  # the classifiers (softmax heads) take features, not images
        return "skipped: precomputed features (data.features): the models take features, not images"
    if step == "weighted_classifiers" and not weighted_classifiers(config):
        return "skipped: classifier.after_verify is empty"
    return None


def _upstream(name: str, config: ml_collections.ConfigDict) -> list[str]:
    """The records whose outputs record `name` reads: its step's inputs (steps.py) but those `config` makes moot."""
    if name.startswith("train_classifier_"):  # weighted by verify's scores
        return ["verify"]
    if name == "weighted_classifiers":
        return [f"train_classifier_{weighting}" for weighting in weighted_classifiers(config)]
    if name not in BY_NAME:
        raise ValueError(f"Unknown step {name!r}; expected one of {STEPS}")
    moot = {"extract"} if config.data.features else set()
    if name == "extract" and config.model.weights != "classifier":
        moot.add("train_classifier")
    if skip_reason("weighted_classifiers", config):
        moot.add("weighted_classifiers")
    return [upstream for upstream in BY_NAME[name].inputs if upstream not in moot]


def _expected(name: str, config: ml_collections.ConfigDict, workdir: str) -> dict:
    """What record `name` must say to describe outputs of `config`: its fields, their hash, its inputs' ids."""
    config = _record_config(name, config)
    fields = recorded_form(select_fields(config, STEP_FIELDS[_step_of(name)]))
    if fields.get("data.format") == "auto":  # the layout it stands for: "auto" and its choice are one dataset
        fields["data.format"] = _resolved_format(config, workdir)
    if _reads_verification(name, config):
        fields.update(verification_inputs(config, workdir))
    inputs = {}
    for upstream in _upstream(name, config):
        record = read_record(workdir, upstream)
        inputs[upstream] = record["id"] if record else None
    return {"step": name, "config_hash": hash_fields(fields), "config": fields, "inputs": inputs}


def _reads_verification(name: str, config: ml_collections.ConfigDict) -> bool:
    """Whether record `name`'s step reads verification labels beyond the dataset's own (train, verify, plan, and a
    classifier fine-tuned on verified rows); the steps after them rerun through their inputs."""
    step = _step_of(name)
    return step in ("train", "verify", "plan") or (step == "train_classifier" and config.classifier.finetune_epochs > 0)


def _label_rows(path: str) -> list[str] | None:
    """The label rows of a verification file (blank lines and a header left out), or None when it is missing."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.rstrip("\r\n") for line in f if line.strip()]
    except FileNotFoundError:
        return None
    if lines and lines[0].split("\t")[1:2] not in (["0"], ["1"]):
        lines = lines[1:]  # a header, as the readers skip it ("class_name/key<TAB>verification_label")
    return lines


def verification_inputs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, str]]:
    """{"verification_files": {path: sha256 of its label rows (16 hex digits)}} of the verification files
    applied to the table (workdir.extra_verified_paths: cleannet-review's decisions, data.extra_verified) that
    hold a row, or {} when none does (a record made before these were recorded still matches; a review file
    with a header only changes nothing). Paths under `workdir` are relative."""
    digests = {}
    for path in extra_verified_paths(config, workdir):
        rows = _label_rows(path)
        if rows == []:
            continue
        digest = "missing" if rows is None else hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
        inside = os.path.commonpath([os.path.abspath(workdir), path]) == os.path.abspath(workdir)
        digests[os.path.relpath(path, workdir) if inside else path] = digest
    return {"verification_files": digests} if digests else {}


def forget(name: str, workdir: str) -> None:
    """Removes record `name` (its outputs were replaced: the plan and verify steps share WORKDIR/verify/)."""
    path = _record_path(workdir, name)
    if os.path.exists(path):
        os.remove(path)


def _resolved_format(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The format data.format=auto reads data.root as ("auto" while there is nothing to tell apart yet)."""
    try:
        return detect_format(resolve_data_root(config, workdir))[0]
    except ValueError:
        return "auto"



def _changes(old: dict, new: dict, *, limit: int = 6) -> list[str]:
    """["train.steps 3000 -> 600", ...]: the fields whose values differ."""
    changed = [f"{field} {old.get(field, '(unset)')!r} -> {new.get(field, '(unset)')!r}"
               for field in sorted(set(old) | set(new) - {"verification_files"}) if old.get(field) != new.get(field)]
    old_files, new_files = old.get("verification_files") or {}, new.get("verification_files") or {}
    changed += [f"verification file {path} " + ("new" if path not in old_files else "gone" if path not in new_files
                                                 else "changed")
                for path in sorted(set(old_files) | set(new_files)) if old_files.get(path) != new_files.get(path)]
    return changed[:limit] + ([f"and {len(changed) - limit} more"] if len(changed) > limit else [])


def _mismatch(record: dict, expected: dict) -> str | None:
    """Why `record` does not describe the outputs `expected` wants, or None when it does."""
    if record["config_hash"] != expected["config_hash"]:
        return "config changed: " + ", ".join(_changes(record.get("config", {}), expected["config"]))
    for upstream, wanted in expected["inputs"].items():
        if record.get("inputs", {}).get(upstream) != wanted:
            return f"its input {upstream} was rerun since"
    if set(record.get("inputs", {})) != set(expected["inputs"]):
        return "its inputs changed (" + ", ".join(sorted(set(record.get("inputs", {})) ^ set(expected["inputs"]))) + ")"
    return None


def staleness(name: str, config: ml_collections.ConfigDict, workdir: str) -> str | None:
    """None when record `name` says its outputs are those of `config` and of complete inputs; else why not.

    A record that is unreadable, partial, or lists an output that is gone is "not complete" (the reason names
    the record file and the missing output).
    """
    path = _record_path(workdir, name)
    record, problem = _load_record(path)
    if problem:
        return problem
    if record is None:
        started = read_record(workdir, name, started=True)
        return f"interrupted (started {started.get('started', '?')}, no DONE record)" if started else "not run yet"
    expected = _expected(name, config, workdir)
    if record["config_hash"] != expected["config_hash"]:
        return _mismatch(record, expected)
    for upstream in record["inputs"]:
        upstream_reason = staleness(upstream, config, workdir)
        if upstream_reason:
            return f"its input {upstream} is not complete ({upstream_reason})"
    reason = _mismatch(record, expected)
    if reason:
        return reason
    missing = _missing_output(record, workdir)
    return f"its output {missing} is gone (listed in its DONE record {path})" if missing else None


def step_complete(step: str, config: ml_collections.ConfigDict, workdir: str) -> bool:
    """Whether `step`'s outputs in `workdir` are complete for `config` (cleannet-run skips those).

    Trusts only the step's DONE record.
    A step cleannet-run skips under `config` (precomputed features, no weighted classifiers) counts as complete.
    """
    if skip_reason(step, config) and step != "train_classifier":
        return True
    return staleness(record_name(step, config), config, workdir) is None


def note_unrecorded_workdir(workdir: str) -> bool:
    """Logs one line when `workdir` holds outputs but no WORKDIR/done/ (a version before DONE records wrote it).

    Every step of such a workdir runs again. Then creates WORKDIR/done/ (said once). Returns whether it is one.
    """
    if os.path.isdir(done_dir(workdir)) or not os.path.isdir(workdir):
        return False
    outputs = [path for path in (output(workdir) for output in OUTPUT_DIRS) if os.path.lexists(path)]
    if outputs:
        logging.info("%s has outputs but no DONE records (written before them): every step runs again.", workdir)
    os.makedirs(done_dir(workdir), exist_ok=True)
    return bool(outputs)


def _clear_paths(name: str, workdir: str) -> list[str]:
    """What a rerun of record `name` with other settings removes first (resuming from it would mix settings).

    verify and export keep theirs: verify replaces its folder whole, each export adds versions.
    """
    if name.startswith("train_classifier"):
        return [classifier_dir(workdir) + name[len("train_classifier"):]]
    return BY_NAME[name].outputs(workdir) if name in BY_NAME else []


def begin_step(name: str, config: ml_collections.ConfigDict, workdir: str) -> None:
    """Before record `name`'s step runs: outputs of other settings removed, a started record, no DONE record."""
    expected = _expected(name, config, workdir)
    prior = read_record(workdir, name, started=True) or read_record(workdir, name)
    reason = _mismatch(prior, expected) if prior else None
    if prior is None:  # an unreadable record: the settings its outputs were made with are unknown
        reason = (_load_record(_record_path(workdir, name, started=True), started=True)[1]
                  or _load_record(_record_path(workdir, name))[1])
    elif not reason and "outputs" in prior and _missing_output(prior, workdir):  # resuming would not remake it
        reason = f"its output {_missing_output(prior, workdir)} is gone"
    if reason:
        for path in _clear_paths(name, workdir):
            if os.path.lexists(path):
                logging.info("%s: %s; removing %s (its outputs start over).", name, reason, path)
                atomic_io.remove_path(path)
    os.makedirs(done_dir(workdir), exist_ok=True)
    atomic_io.write_json(_record_path(workdir, name, started=True),
                         {**expected, "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    if os.path.exists(_record_path(workdir, name)):
        os.remove(_record_path(workdir, name))


def _write_record(name: str, config: ml_collections.ConfigDict, workdir: str, *, outputs: list[str]) -> dict:
    expected = _expected(name, config, workdir)
    started = read_record(workdir, name, started=True)
    read = (started or {}).get("config", {}).get("verification_files")
    if started and read != expected["config"].get("verification_files"):  # changed while it ran: what it read
        fields = {**{k: v for k, v in expected["config"].items() if k != "verification_files"},
                  **({"verification_files": read} if read else {})}
        expected = {**expected, "config": fields, "config_hash": hash_fields(fields)}
    record = {**expected, "id": uuid.uuid4().hex,
              "outputs": sorted(os.path.relpath(path, workdir) for path in outputs),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}
    atomic_io.write_json(_record_path(workdir, name), record)
    return record


def finish_step(name: str, config: ml_collections.ConfigDict, workdir: str, outputs: list[str]) -> None:
    """The step's last act: WORKDIR/config.<name>.json, then its DONE record (then the started record goes)."""
    save_config(_record_config(name, config), os.path.join(workdir, f"config.{name}.json"))
    _write_record(name, config, workdir, outputs=outputs)
    started = _record_path(workdir, name, started=True)
    if os.path.exists(started):
        os.remove(started)


def files_under(*paths: str) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            files += [os.path.join(directory, name) for directory, _, names in os.walk(path) for name in names]
        elif os.path.exists(path):
            files.append(path)
    return files


def recorded_warnings(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """The sanity warnings (sanity.py) in the metrics.json of every classifier and of cleannet-verify."""
    paths = [os.path.join(classifier_output_dir(workdir, weighting), "metrics.json")
             for weighting in ["none", *weighted_classifiers(config)]]
    warnings = []
    for path in [*paths, os.path.join(verify_dir(workdir), "metrics.json")]:
        if os.path.exists(path):
            with open(path) as f:
                warnings += json.load(f).get("warnings", [])
    return warnings
