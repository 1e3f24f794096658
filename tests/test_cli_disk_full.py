"""A full disk while cleannet-run writes an output: one error line naming the path, no traceback (cli/flags.py
describe_error, atomic_io.DiskFullError).

The workdir is a real small file system (a tmpfs mounted in a private mount namespace), filled up at a
boundary of the run (tests/kill_boundaries.py "fill:"), so the next writer meets a real ENOSPC: the references'
np.savez into an open file (atomic_io.atomic_path: every output written through a temporary name), a CleanNet
checkpoint (TensorFlow's ResourceExhaustedError, through training/checkpointing.save_checkpoint).
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import write_feature_dataset

from cleannet_tf import atomic_io
from cleannet_tf.cli import flags as cli_flags

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--config=" + str(ROOT / "configs" / "tiny.py"), "--config.data.format=tsv",
         "--config.data.root=data/labels.tsv", "--config.data.features=data/features.npz",
         "--config.data.check_images=false", "--config.refs.num_references=4", "--config.train.steps=20",
         "--config.train.checkpoint_every=10", "--config.train.eval_every=10", "--config.train.log_every=10",
         "--config.classifier.epochs=1", "--config.classifier.batch_size=32"]
FIX = "no space left on device; free some space (or use another --workdir) and rerun."


def test_describe_error_names_the_path_of_a_disk_full_error():
    path = "/work/x/references.npz"
    error = atomic_io.disk_full_error(OSError(errno.ENOSPC, "No space left on device"), path)
    assert cli_flags.describe_error(error) == f"Cannot write {path}: {FIX}"
    limit = atomic_io.disk_full_error(OSError(errno.EFBIG, "File too large"), path)
    assert cli_flags.describe_error(limit) == (
        f"Cannot write {path}: no space left on device (file size limit reached); free some space (or use another "
        "--workdir) and rerun.")
    # TensorFlow's file system says it in the message of its own error class (checkpoints, SavedModels).
    tensorflow = tf.errors.ResourceExhaustedError(None, None, "/x/ckpt-1_temp/part-0.tempstate1; No space left on "
                                                               "device [Op:SaveV2]")
    assert isinstance(atomic_io.disk_full_error(tensorflow, "/x"), atomic_io.DiskFullError)
    assert atomic_io.disk_full_error(ValueError("bad value"), path) is None


@pytest.mark.slow
@pytest.mark.parametrize("boundary, path", [
    ("write done/refs.started.json", "references.npz"),  # np.savez into an open temporary file
    ("write cleannet/metrics.json", "cleannet/checkpoints"),  # step 10's checkpoint after it: TensorFlow's error
])
def test_a_full_disk_during_cleannet_run_is_one_line_naming_the_path(tmp_path, boundary, path):
    write_feature_dataset(tmp_path / "data", num_classes=4, per_class=60, feature_dim=8)
    work = tmp_path / "work"
    work.mkdir()
    command = " ".join([sys.executable, str(ROOT / "tests" / "kill_boundaries.py"), str(tmp_path / "events.txt"),
                        f"'fill:{boundary}'", "--workdir=work", *FLAGS])
    script = f"mount -t tmpfs -o size=8m tmpfs {work} || exit 97; exec {command}"
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                [str(ROOT), os.environ.get("PYTHONPATH", "")])}, timeout=600)
    if result.returncode == 97 or "unshare: " in result.stderr:
        pytest.skip(f"no private tmpfs mount here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cleannet-run: error: Cannot write {work}/"), last
    named = last[len("cleannet-run: error: Cannot write "):].split(":", 1)[0]
    assert named.endswith(path), last
    assert last.endswith(f": {FIX} (--debug shows the traceback)"), last


_DEMO = """
import sys
from cleannet_tf.cli import flags
from cleannet_tf.data import demo
try:
    demo.generate_demo_dataset(sys.argv[1], images_per_class=40)
except OSError as error:
    print(type(error).__name__, flags.describe_error(error))
"""


def test_a_full_disk_while_writing_the_demo_dataset_names_its_folder(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {small} || exit 97; "
              f"exec {sys.executable} -c '{_DEMO}' {small}/demo_data")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    if result.returncode == 97 or "unshare: " in result.stderr:
        pytest.skip(f"no private tmpfs mount here: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [f"DiskFullError Cannot write {small}/demo_data: {FIX}"]
