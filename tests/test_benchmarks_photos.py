"""benchmarks/photos_realnoise.py's metric code, checked in a process of its own (benchmarks_photos_checks.py): the
benchmark defines global absl flags (--config, ...) that would clash with the commands' in this test process."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_photos_benchmark_metric_checks_pass_in_their_own_process():
    checks = os.path.join(REPO, "tests", "benchmarks_photos_checks.py")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", checks],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0 and " passed" in result.stdout and "failed" not in result.stdout, \
        result.stdout[-3000:] + result.stderr[-2000:]
