"""Multi-worker tests: two worker processes of one MultiWorkerMirroredStrategy on loopback (tests/mwms_worker.py)."""

import os
import socket
import subprocess
import sys

import numpy as np


def run_two_workers(config, workdir: str, tmp_path, task: str) -> list:
    """Runs tests/mwms_worker.py TASK (cleannet | finetune) as two worker processes of one MultiWorkerMirroredStrategy
    on loopback ports -> their saved results (np.load of each worker's .npz: weights arr_<i>, is_chief, replicas);
    asserts both exited 0, worker 0 is the chief and the strategy had 2 replicas."""
    config_path = tmp_path / f"{task}_config.json"
    config_path.write_text(config.to_json())
    sockets = [socket.socket() for _ in range(2)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = ",".join(str(s.getsockname()[1]) for s in sockets)
    for s in sockets:
        s.close()
    outs = [tmp_path / f"{task}_worker{i}.npz" for i in range(2)]
    worker_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mwms_worker.py")
    workers = [subprocess.Popen([sys.executable, worker_script, str(i), ports, str(config_path), workdir,
                                 str(outs[i]), task], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for i in range(2)]
    for worker in workers:
        output, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0, output.decode()[-3000:]
    results = [np.load(out) for out in outs]
    assert [bool(r["is_chief"]) for r in results] == [True, False]
    assert all(int(r["replicas"]) == 2 for r in results)
    return results
