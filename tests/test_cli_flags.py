"""The commands' shared entry (cleannet_tf/cli/flags.py) as users meet it: one error line naming the file or
field, exit 1, a traceback only with --debug; help that says what each command does; TensorFlow's info lines
filtered. Real subprocesses on real files, failing at validation or load, before any training."""

import errno
import logging
import os
import re

import pytest
from error_helpers import _run, _truncate, _tsv, _write

COMMANDS = ("extract", "refs", "train", "verify", "train_classifier", "run", "demo", "export", "serve", "config",
            "review")


def test_workdir_that_is_a_file_is_one_line_and_traceback_only_with_debug(tmp_path):
    workdir = _write(tmp_path / "not_a_folder", "x")
    as_a_user = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # conftest sets it
    result = _run("refs", f"--workdir={workdir}", "--config=configs/demo.py", env=as_a_user)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"cleannet-refs: error: --workdir {workdir} is a file, not a folder: choose a folder (it is "
                     "created if missing). (--debug shows the traceback)"], result.stderr  # nothing else: quiet
    debug = _run("refs", f"--workdir={workdir}", "--config=configs/demo.py", "--debug")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert "is a file, not a folder" in debug.stderr


def test_truncated_features_npz_is_named(tmp_path):
    from conftest import write_feature_dataset

    overrides, _, _ = write_feature_dataset(tmp_path / "data", num_classes=3, per_class=20)
    _truncate(overrides["data.features"])
    flags = [f"--config.{k}={v}" for k, v in overrides.items()]
    result = _run("refs", f"--workdir={tmp_path / 'work'}", *flags)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cleannet-refs: error: {overrides['data.features']} is not a valid .npz (truncated or "
                           "corrupt):"), result.stderr


def test_tsv_without_validation_rows_is_a_cold_start_and_a_too_small_one_fails_in_one_line(tmp_path):
    # The demo's config on the user's own TSV: used as a tsv dataset (and said so). No verified validation rows
    # makes it a cold start (the plan asks for them), which these 30 images cannot train: one line, before any
    # training, nothing advises deleting the data.
    rows = [f"img{i}.jpg\tclass{i % 3}\t{'1' if i % 4 == 0 else ''}\t" for i in range(30)]
    tsv = _tsv(tmp_path / "mine", rows)
    workdir = tmp_path / "work"
    result = _run("run", "--config=configs/demo.py", f"--config.data.root={tsv}", "--config.data.check_images=false",
                  f"--workdir={workdir}")
    assert result.returncode == 1
    assert f"data.root {tsv} is not a demo dataset: using it as a tsv dataset with the demo's settings" in result.stderr
    assert "Nothing verified yet (no verified validation rows)" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cleannet-run: error: 30 training images (noisy labels) is fewer than one batch of 64. "
        "(--debug shows the traceback)")
    assert "delete" not in result.stderr.lower()
    assert not (workdir / "classifier").exists()  # failed before the first step
    # The config goes to the workdir file, not to the log.
    assert (workdir / "config.run.json").exists()
    assert "demo_noise_rate" not in result.stderr


def test_each_command_docstring_says_what_it_does_and_run_goes_through_cli_run():
    import ast
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f"cleannet_tf.cli.{name}")
        doc = module.__doc__
        assert doc.startswith("cleannet-") and ": " in doc.splitlines()[0], name
        assert "Reads:" in doc and "Writes:" in doc, name
        assert "--debug" in doc, name
        if name != "serve":
            assert "cleannet-config --show" in doc, name
        run = next(node for node in ast.parse(open(module.__file__).read()).body
                   if isinstance(node, ast.FunctionDef) and node.name == "run")
        assert re.search(r"\b(cli_flags|flags)\.run\(main", ast.unparse(run)), name  # cli/flags.py run: --help text


@pytest.mark.parametrize("name", ["verify", "run", "config"])
def test_help_shows_the_description_and_the_flags_without_startup_noise(name):
    as_a_user = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = _run(name, "--help", env=as_a_user)
    module = __import__(f"cleannet_tf.cli.{name}", fromlist=["_"])
    assert module.__doc__.strip() in result.stdout  # the whole description
    assert "--config:" in result.stdout and "--debug:" in result.stdout.replace("--[no]debug:", "--debug:")
    assert ("--workdir:" in result.stdout) == (name != "config")
    assert result.stderr == "", result.stderr  # no TensorFlow start-up lines


def test_serve_help_lists_its_own_flags():
    result = _run("serve", "--help")
    assert "--model_config_file:" in result.stdout and "--rest_api_port:" in result.stdout
    assert "--workdir:" not in result.stdout


def test_describe_error_names_the_path_of_a_full_disk():
    from cleannet_tf.cli import flags as cli_flags

    error = OSError(errno.ENOSPC, "No space left on device", "/work/x/shard-00001.features.npy")
    assert cli_flags.describe_error(error) == ("/work/x/shard-00001.features.npy: no space left on device: free some "
                                               "space (or choose another --workdir) and rerun.")
    assert cli_flags.describe_error(FileExistsError(errno.EEXIST, "File exists", "/a")) == "/a: File exists."


def test_tensorflow_info_lines_are_filtered_but_ours_and_its_warnings_are_not():

    import tensorflow as tf

    from cleannet_tf.cli import flags as cli_flags

    saver = os.path.join(os.path.dirname(tf.__file__), "python", "checkpoint", "functional_saver.py")
    record = lambda level, path: logging.LogRecord("absl", level, path, 1, "message", None, None)  # noqa: E731
    assert not cli_flags._without_tensorflow_info(record(logging.INFO, saver))  # "Sharding callback duration"
    assert cli_flags._without_tensorflow_info(record(logging.WARNING, saver))
    assert cli_flags._without_tensorflow_info(record(logging.INFO, cli_flags.__file__))
