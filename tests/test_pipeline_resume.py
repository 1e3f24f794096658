"""cleannet-run and the step commands after kills, config changes and a second process: real subprocesses,
real SIGKILL, real files (DONE records, the workdir lock, the verify folder published whole)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_config, write_feature_dataset

from cleannet_tf import atomic_io
from cleannet_tf.pipeline import lock as workdir_lock_lib
from cleannet_tf.pipeline import records, runner
from cleannet_tf.pipeline.refs import run_refs
from cleannet_tf.pipeline.steps import STEPS, VERIFY_OUTPUTS
from cleannet_tf.pipeline.workdir import done_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small CleanNet on the planted-cluster features: configs/tiny.py, logging less often.
TINY_CONFIG = os.path.join(ROOT, "configs", "tiny.py")
QUIET = {"train.log_every": 500}


def _flags(overrides: dict, workdir, **extra) -> list[str]:
    settings = {**overrides, **QUIET, **extra}
    return [f"--workdir={workdir}", f"--config={TINY_CONFIG}", *(f"--config.{k}={v}" for k, v in settings.items())]


def _config(overrides: dict, **extra):
    return tiny_config({**overrides, **QUIET, **extra})


def _command(module: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", f"cleannet_tf.cli.{module}", *flags]


def _run(module: str, flags: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_command(module, flags), capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def _status(stdout: str) -> dict[str, str]:
    """cleannet-run's summary: step -> what it did."""
    return dict(line.split(None, 1) for line in stdout.strip().splitlines() if line.split(None, 1)[0] in
                STEPS)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300, interval: float = 0.01) -> bool:
    """Polls predicate() until it holds (True) or the process ends or time runs out (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return bool(predicate())
        time.sleep(interval)
    return False


def test_sigkill_of_run_during_training_resumes_to_the_uninterrupted_result(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    steps = 3000
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    process = subprocess.Popen(_command("run", _flags(overrides, killed, **{"train.steps": steps})), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / "cleannet" / "checkpoints"
    # Killed once a checkpoint and a best model.keras + metrics.json exist: what c90b6d9 took for complete.
    ready = _wait_for(lambda: (checkpoints / "ckpt-300.index").exists() and (killed / "cleannet" / "model.keras")
                      .exists() and (killed / "cleannet" / "metrics.json").exists(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert ready and process.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    last = int(tf.train.latest_checkpoint(str(checkpoints)).rsplit("-", 1)[1])
    assert 100 <= last < steps  # (the kill may land before ckpt-300 is listed as the latest)
    assert not (killed / "done" / "train.json").exists()
    assert not records.step_complete("train", _config(overrides, **{"train.steps": steps}), str(killed))

    resumed = _run("run", _flags(overrides, killed, **{"train.steps": steps}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    status = _status(resumed.stdout)
    assert status["refs"] == "already complete"
    assert status["train"].startswith(f"{steps} steps") and "interrupted" in status["train"]
    assert f"Resumed from {checkpoints}/ckpt-{last}" in resumed.stderr
    uninterrupted = _run("run", _flags(overrides, clean, **{"train.steps": steps}))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    a = json.loads((killed / "cleannet" / "metrics.json").read_text())
    b = json.loads((clean / "cleannet" / "metrics.json").read_text())
    assert a["step"] == b["step"] == steps and a["best_step"] == b["best_step"]
    assert a["detection_error"] == pytest.approx(b["detection_error"], abs=1e-6)
    model_a = keras.saving.load_model(str(killed / "cleannet" / "model.keras"))
    model_b = keras.saving.load_model(str(clean / "cleannet" / "model.keras"))
    for got, want in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    verify_a = json.loads((killed / "verify" / "metrics.json").read_text())
    verify_b = json.loads((clean / "verify" / "metrics.json").read_text())
    assert verify_a["threshold"] == pytest.approx(verify_b["threshold"], abs=1e-6)
    record = json.loads((killed / "done" / "train.json").read_text())
    assert record["config"]["train.steps"] == steps and "cleannet/model.keras" in record["outputs"]
    assert not (killed / "done" / "train.started.json").exists()


def _verify_set(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in VERIFY_OUTPUTS}


def _staging_files(workdir) -> set[str] | None:
    """Files in cleannet-verify's temporary folder beside WORKDIR/verify, or None when there is none."""
    for name in os.listdir(workdir):
        if name.startswith("verify.tmp-"):
            try:
                return set(os.listdir(workdir / name))
            except FileNotFoundError:
                return None
    return None


def test_sigkill_of_verify_between_outputs_leaves_the_old_complete_set(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    workdir = tmp_path / "work"
    settings = {"train.steps": 200, "cleannet.mode": "stacked"}
    config = _config(overrides, **settings)
    runner.run_steps(config, str(workdir), steps=("refs", "train"))
    old_config = _config(overrides, **settings, **{"verify.signals": "class_mean_margin"})
    new_flags = _flags(overrides, workdir, **settings, **{"verify.signals": "cleannet_cosine,cleannet_margin"})
    runner.run_step("verify", old_config, str(workdir))
    old = _verify_set(workdir / "verify")
    assert (workdir / "done" / "verify.json").exists()

    caught = None
    for _ in range(3):  # SIGSTOP freezes it where it is; a stop after the last output is not "between": retry
        process = subprocess.Popen(_command("verify", new_flags), cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        _wait_for(lambda: "scores.tsv" in (_staging_files(workdir) or ()), process, interval=0.002)
        process.send_signal(signal.SIGSTOP)
        written = _staging_files(workdir) or set()
        process.send_signal(signal.SIGKILL)
        process.wait()
        if written and "report.html" not in written:
            caught = written
            break
        runner.run_step("verify", old_config, str(workdir))  # back to the old set for the next try
        old = _verify_set(workdir / "verify")
    assert caught, "never stopped cleannet-verify between its outputs"
    assert "scores.tsv" in caught and not set(VERIFY_OUTPUTS) <= caught
    assert _verify_set(workdir / "verify") == old  # the old complete set, untouched
    assert not (workdir / "done" / "verify.json").exists()  # and not counted as complete
    assert _staging_files(workdir) is not None  # the killed run's temporary folder is still there

    new = _run("verify", new_flags)
    assert new.returncode == 0, new.stderr[-3000:]
    assert _staging_files(workdir) is None  # cleaned at the next start (its pid is dead)
    current = _verify_set(workdir / "verify")
    assert current["scores.tsv"] != old["scores.tsv"]
    metrics = json.loads(current["metrics.json"])
    assert set(metrics["signal_weights"]) and metrics["signal_weights"]["class_mean_margin"] == 0.0
    noisy = [line.split("\t")[3] for line in current["scores.tsv"].decode().splitlines()[1:]]
    scores = [float(line.split("\t")[2]) for line in current["scores.tsv"].decode().splitlines()[1:]]
    labels = [line.split("\t")[1] for line in current["scores.tsv"].decode().splitlines()[1:]]
    threshold = dict(zip(metrics["class_names"], metrics["class_thresholds"], strict=True))  # the operating point's
    assert all((s < threshold[c]) == (n == "1") for s, c, n in zip(scores, labels, noisy, strict=True))
    assert json.loads((workdir / "config.verify.json").read_text())["verify"]["signals"] == \
        ["cleannet_cosine", "cleannet_margin"]  # the comma string on the command line, a tuple in the config


def test_second_process_on_a_busy_workdir_is_refused_naming_the_holder(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    workdir = tmp_path / "work"
    first = subprocess.Popen(_command("run", _flags(overrides, workdir, **{"train.steps": 10**6})), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = workdir / workdir_lock_lib.LOCK_FILE

        def holder():
            try:
                return json.loads(lock.read_text()).get("pid") == first.pid
            except (FileNotFoundError, ValueError):
                return False

        assert _wait_for(lambda: holder() and (workdir / "config.run.json").exists(), first, timeout=120), \
            "cleannet-run never took the lock"
        config_run = (workdir / "config.run.json").read_text()
        second = _run("run", _flags(overrides, workdir, **{"train.steps": 10}), timeout=300)
        assert second.returncode != 0
        message = second.stderr.strip().splitlines()[-1]
        assert message.startswith(f"cleannet-run: error: {workdir} is in use by pid {first.pid} (cleannet-run "
                                  f"--workdir={workdir} ")
        assert " since 20" in message
        assert (workdir / "config.run.json").read_text() == config_run  # the refused one wrote nothing
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    workdir_lock_lib.acquire(str(workdir), "test")  # the kernel released the killed holder's lock
    try:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    finally:
        workdir_lock_lib.release(str(workdir))


def test_changed_field_reruns_its_step_and_the_next_runtime_field_does_not(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    workdir = str(tmp_path / "work")
    config = _config(overrides, **{"train.steps": 200})
    first = runner.run_steps(config, workdir)
    assert first["train"].startswith("200 steps") and first["verify"].startswith("threshold")
    before = json.loads(open(os.path.join(workdir, "cleannet", "metrics.json")).read())

    quiet = _config(overrides, **{"train.steps": 200, "train.log_every": 7, "train.checkpoint_every": 50,
                                  "runtime.strategy": "default", "extract.batch_size": 32})
    assert runner.run_steps(quiet, workdir) == {
        **first, "train_classifier": "already complete", "refs": "already complete", "train": "already complete",
        "verify": "already complete", "weighted_classifiers": "already complete"}

    changed = _config(overrides, **{"train.steps": 200, "train.learning_rate": 0.02})
    second = runner.run_steps(changed, workdir)
    assert second["refs"] == "already complete"
    assert second["train"].startswith("200 steps") and "train.learning_rate 0.05 -> 0.02" in second["train"]
    assert second["verify"].startswith("threshold") and "its input train was rerun" in second["verify"]
    after = json.loads(open(os.path.join(workdir, "cleannet", "metrics.json")).read())
    assert after["history"][-1]["loss"] != before["history"][-1]["loss"]  # trained again, not resumed at its end
    assert json.loads(open(os.path.join(workdir, "config.train.json")).read())["train"]["learning_rate"] == 0.02
    assert records.read_record(workdir, "train")["config"]["train.learning_rate"] == 0.02
    assert records.step_complete("verify", changed, workdir) and not records.step_complete("verify", config,
                                                                                              workdir)

    fewer = _config(overrides, **{"train.steps": 200, "train.learning_rate": 0.02, "refs.num_references": 8})
    third = runner.run_steps(fewer, workdir)
    assert all(not third[step].startswith("already") for step in ("refs", "train", "verify"))
    assert "refs.num_references 16 -> 8" in third["refs"]
    assert json.loads(open(os.path.join(workdir, "config.refs.json")).read())["refs"]["num_references"] == 8


def test_workdir_of_a_version_before_done_records_runs_every_step_again(tmp_path, caplog):
    # Outputs made by the library functions directly (as versions before DONE records left them), no done/.
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    workdir = str(tmp_path / "work")
    config = _config(overrides, **{"train.steps": 200})
    run_refs(config, workdir, progress=False)
    assert not os.path.exists(done_dir(workdir))
    assert not records.step_complete("refs", config, workdir)
    with caplog.at_level(logging.INFO, logger="absl"):  # absl's own level, whatever an earlier test left it at
        status = runner.run_steps(config, workdir)
    said = [r.getMessage() for r in caplog.records if "no DONE records" in r.getMessage()]
    assert said == [f"{workdir} has outputs but no DONE records (written before them): every step runs again."]
    assert status["refs"] != "already complete" and status["train"].startswith("200 steps")
    assert all(records.step_complete(step, config, workdir) for step in ("refs", "train", "verify"))


def test_temp_litter_of_dead_processes_is_cleaned_when_the_lock_is_taken(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    workdir = tmp_path / "work"
    (workdir / "cleannet").mkdir(parents=True)
    (workdir / "saved_models" / "cleannet_verifier" / f".tmp-3-{dead}").mkdir(parents=True)
    litter = [workdir / f"config.run.json.tmp-{dead}", workdir / "cleannet" / f"model.tmp-{dead}.keras",
              workdir / f"references.npz.tmp-{dead}-0a1b2c3d", workdir / "config.run.json.tmp"]
    alive = [workdir / f"scores.tsv.tmp-{os.getpid()}-00ff00ff", workdir / "features.tmp-1"]  # pid 1 is alive
    for path in litter + alive:
        path.write_text("partial")
    (workdir / f"verify.old-{dead}-12345678").mkdir()  # killed between publish_dir's two renames
    (workdir / f"verify.old-{dead}-12345678" / "scores.tsv").write_text("old set")
    workdir_lock_lib.acquire(str(workdir), "test")
    try:
        assert not any(path.exists() for path in litter)
        assert not (workdir / "saved_models" / "cleannet_verifier" / f".tmp-3-{dead}").exists()
        assert all(path.exists() for path in alive)
        assert (workdir / "verify" / "scores.tsv").read_text() == "old set"  # put back
        with pytest.raises(OSError):
            os.listdir(workdir / f"verify.old-{dead}-12345678")
    finally:
        workdir_lock_lib.release(str(workdir))


def test_publish_dir_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "verify"
    for generation in ("old", "new"):
        with atomic_io.staging_dir(str(target)) as staging:
            for name in ("a", "b"):
                open(os.path.join(staging, name), "w").write(generation)
        assert {p.name: p.read_text() for p in target.iterdir()} == {"a": generation, "b": generation}
    with pytest.raises(RuntimeError), atomic_io.staging_dir(str(target)) as staging:
        open(os.path.join(staging, "a"), "w").write("half")
        raise RuntimeError("killed")
    assert {p.name: p.read_text() for p in target.iterdir()} == {"a": "new", "b": "new"}
    assert sorted(os.listdir(tmp_path)) == ["verify"]


_WRITE_CONFIGS = """
import os, resource, signal, sys
from cleannet_tf import config as config_lib
from cleannet_tf.pipeline import records
config = config_lib.default_config()
config.data.root = "x" * 2000000  # a 2 MB config JSON: more than the tmpfs holds and the file size limit allows
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # as ulimit -f 1024: write() gets EFBIG past 1 MiB
for target in sys.argv[1:]:
    try:
        records.save_config(config, target)
    except OSError as error:
        print(type(error).__name__, error)
    print("left:", sorted(os.listdir(os.path.dirname(target))))
"""


def test_full_disk_and_file_size_limit_name_the_path_and_leave_no_temp_file(tmp_path):
    # A real full file system (a 32 KiB tmpfs mounted in a private mount namespace) and a real RLIMIT_FSIZE.
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir()
    large.mkdir()
    full, limited = small / "config.run.json", large / "config.run.json"
    script = (f"mount -t tmpfs -o size=32k tmpfs {small} || exit 97; "
              f"exec {sys.executable} -c '{_WRITE_CONFIGS}' {full} {limited}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    if result.returncode == 97 or "unshare: " in result.stderr:
        pytest.skip(f"no private tmpfs mount here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"DiskFullError [Errno 28] Cannot write {full}: no space left on device; free some space (or use another "
        "--workdir) and rerun", "left: []",
        f"DiskFullError [Errno 27] Cannot write {limited}: no space left on device (file size limit reached); free "
        "some space (or use another --workdir) and rerun", "left: []"]


_WRITE_SHARD = """
import os, resource, signal, sys
import numpy as np
from cleannet_tf.features import store as feature_store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # NumPy's fwrite then stops short, with no errno
try:
    feature_store._atomic_save(sys.argv[1], np.zeros((600, 1000), np.float32))  # 2.4 MB
except OSError as error:
    print(type(error).__name__, error)
print("left:", sorted(os.listdir(os.path.dirname(sys.argv[1]))))
"""


def test_numpy_short_write_of_a_shard_is_a_disk_full_error_naming_the_path(tmp_path):
    # np.save on a full disk says only "2400000 requested and 1048448 written" (an OSError without errno).
    target = tmp_path / "shard-00000.features.npy"
    result = subprocess.run([sys.executable, "-c", _WRITE_SHARD, str(target)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        f"DiskFullError [Errno 28] Cannot write {target}: no space left on device; free some space (or use another "
        "--workdir) and rerun", "left: []"]
