"""DONE records as cleannet-run trusts them: a missing, unreadable, partial record, or one whose outputs are gone,
runs its step again (one log line naming the record file and the missing output; never a crash, never "already
complete"); the verification files applied to the table (cleannet-review's decisions, data.extra_verified) are
inputs of the steps that read verification labels."""

import copy
import json
import logging
import os
import shutil

import pytest
from conftest import tiny_config, write_feature_dataset

from cleannet_tf.pipeline import records, runner
from cleannet_tf.pipeline.workdir import done_dir, review_dir

SETTINGS = {"refs.num_references": 4, "train.steps": 20, "train.checkpoint_every": 10, "train.eval_every": 10,
            "train.log_every": 10, "classifier.epochs": 1, "classifier.batch_size": 32}


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """(config, a workdir every step of `config` completed in): copy it before changing it."""
    root = tmp_path_factory.mktemp("records")
    overrides, _, _ = write_feature_dataset(root / "data", num_classes=4, per_class=60, feature_dim=8)
    config = tiny_config({**overrides, **SETTINGS})
    runner.run_steps(config, str(root / "work"))
    return config, str(root / "work")


@pytest.fixture
def workdir(complete, tmp_path):
    shutil.copytree(complete[1], tmp_path / "work")
    return str(tmp_path / "work")


def _run(config, workdir, caplog) -> tuple[dict, list[str]]:
    """cleannet-run's steps and the INFO lines that say why a step runs."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="absl"):  # absl's own level, whatever an earlier test left it at
        done = runner.run_steps(config, workdir)
    return done, [r.getMessage() for r in caplog.records if r.getMessage().endswith("; running it.")]


def _damage(path: str, how: str) -> None:
    text = open(path).read()
    record = json.loads(text)
    if how == "not JSON":
        text = "<html>not a record</html>"
    elif how == "truncated":
        text = text[: len(text) // 2]
    elif how == "a JSON list":
        text = json.dumps([record])
    else:
        field, value = how.split(" ", 1)
        record.pop(field) if value == "missing" else record.update({field: json.loads(value)})
        text = json.dumps(record)
    with open(path, "w") as f:
        f.write(text)


DAMAGE = {"not JSON": "unreadable (Expecting value", "truncated": "unreadable (",
          "a JSON list": "unreadable (a JSON list",
          "config_hash missing": "partial (no config_hash)", "id missing": "partial (no id)",
          "inputs [1]": "partial (a list as inputs)", "outputs {}": "partial (a dict as outputs)",
          "outputs [1]": "partial (outputs are not paths)"}


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_record_is_not_complete_and_the_reason_names_its_file(complete, workdir, how):
    config = complete[0]
    record = os.path.join(done_dir(workdir), "train.json")
    _damage(record, how)
    reason = records.staleness("train", config, workdir)
    assert reason.startswith(f"its DONE record {record} is {DAMAGE[how]}"), reason
    assert not records.step_complete("train", config, workdir)
    assert records.staleness("verify", config, workdir).startswith("its input train is not complete (its DONE record")
    assert records.step_complete("refs", config, workdir)


@pytest.mark.parametrize("how", ["config_hash missing"])  # "truncated" and the others: the same path
def test_a_damaged_record_reruns_its_step_with_one_line_naming_it(complete, workdir, caplog, how):
    config = complete[0]
    record = os.path.join(done_dir(workdir), "train.json")
    _damage(record, how)
    done, said = _run(config, workdir, caplog)
    assert done["train"].startswith("20 steps") and f"(ran again: its DONE record {record} is" in done["train"]
    assert done["refs"] == "already complete" and "ran again" in done["verify"]
    train_lines = [line for line in said if line.startswith("train: ")]
    assert len(train_lines) == 1 and train_lines[0].startswith(f"train: its DONE record {record} is "), said
    assert len([line for line in said if record in line]) == 1  # verify's says "its input train was rerun since"
    assert records.step_complete("train", config, workdir) and records.step_complete("verify", config, workdir)
    assert _run(config, workdir, caplog)[0]["train"] == "already complete"


@pytest.mark.parametrize("output, step", [("cleannet/model.keras", "train"), ("verify/report.html", "verify")])
def test_a_record_whose_output_is_gone_reruns_its_step_and_remakes_it(complete, workdir, caplog, output, step):
    config = complete[0]
    os.remove(os.path.join(workdir, output))
    record = os.path.join(done_dir(workdir), f"{step}.json")
    done, said = _run(config, workdir, caplog)
    why = f"its output {os.path.join(workdir, output)} is gone (listed in its DONE record {record})"
    assert done[step].endswith(f"(ran again: {why})"), done
    assert f"{step}: {why}; running it." in said
    assert os.path.exists(os.path.join(workdir, output))
    assert all(records.step_complete(s, config, workdir) for s in ("train_classifier", "refs", "train", "verify"))


def _unverified_train_keys(config, count: int) -> list[str]:
    lines = open(config.data.root).read().splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.split("\t")[2:] == ["", "train"]][:count]


def _write_verified(path: str, keys: list[str], value: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("class_name/key\tverification_label\n" + "".join(f"{key}\t{value}\n" for key in keys))


def test_review_decisions_and_extra_verified_files_rerun_the_steps_that_read_them(complete, workdir, caplog, tmp_path):
    config = copy.deepcopy(complete[0])
    assert config.data.merge_review
    keys = _unverified_train_keys(config, 6)
    decisions = os.path.join(review_dir(workdir), "verified_train.tsv")
    _write_verified(decisions, [], 1)  # as cleannet-review leaves it before any decision: a header only
    assert all(records.step_complete(step, config, workdir) for step in ("train", "verify"))
    _write_verified(decisions, keys, 1)
    done, said = _run(config, workdir, caplog)
    assert {step: done[step] for step in ("train_classifier", "refs")} == {
        "train_classifier": "already complete", "refs": "already complete"}
    assert "verification file review/verified_train.tsv new" in done["train"] and "ran again" in done["verify"]
    assert _run(config, workdir, caplog)[0]["train"] == "already complete"  # the same decisions: nothing reruns

    _write_verified(decisions, keys, 0)  # the person changed their mind
    done, _ = _run(config, workdir, caplog)
    assert "verification file review/verified_train.tsv changed" in done["train"]
    assert done["refs"] == "already complete" and "ran again" in done["verify"]

    extra = str(tmp_path / "extra.tsv")
    _write_verified(extra, keys[:3], 1)
    config.data.extra_verified = (extra,)
    done, _ = _run(config, workdir, caplog)  # a new data.extra_verified: a config change of every step
    assert "ran again: config changed: data.extra_verified" in done["refs"]
    _write_verified(extra, keys[:3], 0)  # the same path, other contents: only the steps that read it
    done, _ = _run(config, workdir, caplog)
    assert f"verification file {extra} changed" in done["train"] and "ran again" in done["verify"]
    assert done["refs"] == "already complete"

    os.remove(decisions)
    config.data.extra_verified = ()
    done, _ = _run(config, workdir, caplog)
    assert "verification file review/verified_train.tsv gone" in done["train"]
    assert _run(config, workdir, caplog)[0]["verify"] == "already complete"


def test_a_classifier_fine_tuned_on_verified_rows_reads_the_review_too(complete, workdir):
    config = complete[0]
    tuned = tiny_config({"classifier.finetune_epochs": 1, **SETTINGS, "data.format": "tsv",
                         "data.root": config.data.root, "data.features": config.data.features,
                         "data.check_images": False})
    _write_verified(os.path.join(review_dir(workdir), "verified_train.tsv"), _unverified_train_keys(config, 2), 1)
    assert "verification_files" in records._expected("train_classifier", tuned, workdir)["config"]
    assert "verification_files" not in records._expected("train_classifier", config, workdir)["config"]
    assert "verification_files" not in records._expected("refs", tuned, workdir)["config"]
