"""cleannet-review's retrain (cleannet_tf/review/retrain.py): cleannet-train and cleannet-verify on the review's
labels, and a killed server takes its retrain with it."""

from __future__ import annotations

import json
import os
import time

import pytest
from review_helpers import Client, make_workdir, proposals, start_review_process, wait_for


@pytest.mark.slow
def test_retrain_runs_train_and_verify_with_the_review_labels(server):
    server, work = server
    client = Client(server.port, server.token)
    ramen = [entry["key"] for entry in proposals(work) if entry["key"].startswith("ramen/")]
    for key in ramen[:4]:
        assert client.request("POST", "/api/decide", {"key": key, "decision": "correct"})[0] == 200
    status, _, payload = client.request("POST", "/api/retrain", {})
    assert status == 200 and payload["started"]["before"]["detection_error"] == 0.25
    assert client.request("POST", "/api/retrain", {})[0] == 409  # one at a time
    log = ""
    deadline = time.monotonic() + 600
    while True:
        _, _, status_ = client.request("GET", f"/api/retrain?offset={len(log.encode())}")
        log += status_["log"]
        if not status_["running"]:
            break
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(1)
    entry = status_["history"][-1]
    assert entry["returncode"] == 0, log[-3000:]
    assert entry["decisions"] == 4 and entry["after"]["n_val"] == 12
    assert entry["after"]["detection_error"] is not None and entry["after"] != entry["before"]
    assert json.load(open(os.path.join(work, "review", "history.json"))) == status_["history"]
    # cleannet-train read the release's 4 verified training labels plus the 4 decisions.
    assert "train 24 (verified 8: 8 correct, 0 wrong)" in log
    assert "$ cleannet-verify" in log and os.path.exists(os.path.join(work, "cleannet", "model.keras"))
    new_proposals = {entry["key"] for entry in proposals(work)}
    assert not new_proposals & set(ramen[:4])  # decided images are not proposed again
    _, _, queue_ = client.request("GET", "/api/queue")  # the server reloaded cleannet-verify's new outputs
    assert {item["key"] for group in queue_["classes"] for item in group["items"]} == new_proposals
    assert "cleannet-train --config=" in status_["commands"]


def _children(pid: int) -> list[int]:
    """Child pids of `pid`: every /proc/<n>/stat whose parent field is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone between listdir and open
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads child pids from Linux's /proc")
def test_a_sigkilled_server_takes_its_retrain_with_it(tmp_path):
    config_path, work, _ = make_workdir(tmp_path, train_steps=100000)  # a retrain still training when killed
    process, url = start_review_process(config_path, work, str(tmp_path / "server.log"), retrain=True)
    try:
        port, token = int(url.split(":")[2].split("/")[0]), url.split("token=")[1].split("&")[0]
        status, _, _ = Client(port, token).request("POST", "/api/retrain", {})
        assert status == 200
        log_path = os.path.join(work, "review", "retrain.log")
        wait_for(lambda: os.path.exists(log_path) and "Training cleannet from step 0" in open(log_path).read(),
                 "the train step to start", timeout=120)
        # The steps run in the server's own process (under its workdir lock): no child runs them.
        assert not [pid for pid in _children(process.pid) if b"cleannet" in _cmdline(pid)]
        process.kill()
        process.wait(timeout=30)
        # Stopped, not finished: nothing is left running to go on writing the model.
        time.sleep(2)
        assert not os.path.exists(os.path.join(work, "cleannet", "model.keras"))
    finally:
        process.kill()
