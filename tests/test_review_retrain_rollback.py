"""cleannet-review's Retrain: the pipeline's train and verify steps in the server's process, under the workdir lock.

A retrain that fails, or cannot take the lock, leaves the workdir's outputs and DONE records as they were; one killed
with the server is undone when the next server starts. Real steps on a small workdir (test_review.make_workdir).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from review_helpers import REPO, Client, make_workdir, start_review_process, wait_for

from cleannet_tf.pipeline import records, runner
from cleannet_tf.review import retrain as retrain_lib
from cleannet_tf.review.server import ReviewServer
from cleannet_tf.review.session import ReviewSession, read_metrics

STATE = ("cleannet", "verify", "done", "config.train.json", "config.verify.json")


def workdir_state(work: str) -> dict[str, bytes]:
    """Every file of the train and verify steps' outputs and of done/, by path: what a retrain may replace."""
    files = {}
    for name in STATE:
        path = os.path.join(work, name)
        if os.path.isfile(path):
            files[name] = open(path, "rb").read()
        for directory, _, names in os.walk(path):
            for file_name in names:
                full = os.path.join(directory, file_name)
                files[os.path.relpath(full, work)] = open(full, "rb").read()
    return files


def wait_for_retrain(client: Client) -> dict:
    deadline = time.monotonic() + 300
    while True:
        _, _, status = client.request("GET", "/api/retrain")
        if not status["running"]:
            return status
        assert time.monotonic() < deadline, status["log"][-3000:]
        time.sleep(0.5)


@pytest.fixture
def trained(tmp_path):
    """A workdir after cleannet-run's refs, train and verify (real DONE records), and a server on it."""
    config_path, work, config = make_workdir(tmp_path)
    runner.run_steps(config, work, steps=("refs", "train", "verify"))
    session = ReviewSession(config, work, user="tester")
    retrainer = retrain_lib.Retrainer(config, work, read_metrics=read_metrics,
                                      on_finished=lambda ok: ok and session.reload())
    server = ReviewServer(session, retrainer).start()
    yield config_path, work, config, server
    server.stop()


def test_a_failed_retrain_leaves_the_outputs_and_done_records_as_they_were(trained):
    _, work, config, server = trained
    client = Client(server.port, server.token)
    assert records.step_complete("verify", config, work)
    before = workdir_state(work)
    assert "cleannet/model.keras" in before and "done/train.json" in before and "done/verify.json" in before
    with open(os.path.join(work, "references.npz"), "wb") as f:
        f.write(b"not an npz")  # the train step fails on reading it, after the old run was set aside
    assert client.request("POST", "/api/retrain", {})[0] == 200
    status = wait_for_retrain(client)
    entry = status["history"][-1]
    assert entry["returncode"] == 1 and "references.npz" in entry["error"], status["log"][-3000:]
    assert "$ cleannet-train" in status["log"] and "are back" in status["log"]
    assert workdir_state(work) == before
    assert not os.path.exists(os.path.join(work, "review", "retrain.pending.json"))
    assert records.step_complete("train", config, work) and records.step_complete("verify", config, work)
    assert client.request("GET", "/api/summary")[0] == 200  # still serving


def test_a_retrain_moves_nothing_while_another_process_holds_the_workdir(tmp_path):
    _, work, config = make_workdir(tmp_path)
    os.makedirs(os.path.join(work, "cleannet"))
    with open(os.path.join(work, "cleannet", "model.keras"), "wb") as f:
        f.write(b"the previous run")
    before = workdir_state(work)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from cleannet_tf.pipeline import lock; "
         "lock.acquire(sys.argv[1], 'cleannet-run --workdir=elsewhere'); print('held', flush=True); sys.stdin.read()",
         work], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO})
    session = ReviewSession(config, work, user="tester")
    server = ReviewServer(session, retrain_lib.Retrainer(config, work, read_metrics=read_metrics)).start()
    try:
        assert holder.stdout.readline() == "held\n"
        client = Client(server.port, server.token)
        assert client.request("POST", "/api/retrain", {})[0] == 200
        entry = wait_for_retrain(client)["history"][-1]
        assert entry["returncode"] == 1
        assert f"is in use by pid {holder.pid} (cleannet-run --workdir=elsewhere)" in entry["error"]
        assert workdir_state(work) == before
        assert not os.path.exists(os.path.join(work, "review", "previous"))
    finally:
        server.stop()
        holder.communicate("", timeout=30)


def test_a_retrain_killed_with_the_server_is_undone_when_the_next_server_starts(tmp_path):
    config_path, work, config = make_workdir(tmp_path)
    runner.run_steps(config, work, steps=("refs", "train", "verify"))
    before = workdir_state(work)
    slow_config = tmp_path / "slow_config.py"  # the same, but a retrain still training when killed
    slow_config.write_text(f"import runpy\n\ndef get_config():\n    c = runpy.run_path({config_path!r})['get_config']()"
                           "\n    c.train.steps = 100000\n    return c\n")
    process, url = start_review_process(str(slow_config), work, str(tmp_path / "server.log"), retrain=True)
    try:
        port, token = int(url.split(":")[2].split("/")[0]), url.split("token=")[1].split("&")[0]
        assert Client(port, token).request("POST", "/api/retrain", {})[0] == 200
        log_path = os.path.join(work, "review", "retrain.log")
        wait_for(lambda: os.path.exists(log_path) and "Training cleannet from step 0" in open(log_path).read(),
                 "the train step", timeout=120)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert os.path.exists(os.path.join(work, "review", "retrain.pending.json"))
    assert not os.path.exists(os.path.join(work, "done", "train.json"))  # the killed step's record is gone
    process, _ = start_review_process(config_path, work, str(tmp_path / "server2.log"))
    try:
        assert workdir_state(work) == before
        assert not os.path.exists(os.path.join(work, "review", "retrain.pending.json"))
        assert records.step_complete("verify", config, work)  # the next cleannet-run finds everything complete
        assert "A retrain was interrupted" in open(tmp_path / "server2.log").read()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    assert not os.path.exists(os.path.join(work, "review", "history.json"))  # the killed retrain never finished
