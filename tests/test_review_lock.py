"""cleannet-review is the workdir's one writer: it holds the workdir lock (pipeline/lock.py) while it serves.

Real processes: the first server is the real command; the second command (with and without --config) must stop with
one line naming the first, exit status 1, and change nothing in review/.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from review_helpers import REPO, make_workdir, review_files, start_review_process


def _second(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cleannet_tf.cli.review", *args, "--port=0", "--noretrain"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})


def _assert_refused_naming(second: subprocess.CompletedProcess, work: str, first: subprocess.Popen) -> None:
    assert second.returncode == 1, second.stderr[-3000:]
    assert "Traceback" not in second.stderr and second.stdout == "", second.stderr[-3000:]
    # TensorFlow's C++ start-up lines (e.g. "E0000 ... cuInit") aside, stderr is the one line.
    errors = [line for line in second.stderr.splitlines() if line and not re.match(r"[IWE]\d{4} ", line)]
    assert len(errors) == 1, second.stderr[-3000:]
    assert re.fullmatch(rf"cleannet-review: error: {re.escape(work)} is in use by pid {first.pid} "
                        r"\(cleannet-review (--config=\S+ )?--workdir=\S+ .*\) since .*; wait for it to end, or use "
                        r"another --workdir\. \(--debug shows the traceback\)", errors[0]), errors[0]


def test_a_second_cleannet_review_on_the_workdir_is_refused_with_one_line_naming_the_first(tmp_path):
    config_path, work, _ = make_workdir(tmp_path)
    first, _ = start_review_process(config_path, work, str(tmp_path / "first.log"))
    try:
        before = review_files(work)
        _assert_refused_naming(_second([f"--workdir={work}"]), work, first)
        assert review_files(work) == before  # the refused server wrote nothing
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=30)
    # The lock went with the first server. One started without --config (the saved config) holds it too.
    again, _ = start_review_process(None, work, str(tmp_path / "again.log"))
    try:
        _assert_refused_naming(_second([f"--config={config_path}", f"--workdir={work}"]), work, again)
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0
