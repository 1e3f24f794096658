"""A cleannet-run workdir of main at 41cd3c4 (comma-string config fields) resumes with every step complete.

tests/data/done_records_41cd3c4.json holds each DONE record's `config` and `config_hash` as the code of
41cd3c4 wrote them, made by `cleannet-run` of that commit on this dataset with the flags below (relative data
paths, so the hash does not depend on the temporary folder).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import write_feature_dataset

from cleannet_tf.pipeline.steps import STEPS

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "done_records_41cd3c4.json"
FLAGS = {"data.format": "tsv", "data.root": "data/labels.tsv", "data.features": "data/features.npz",
         "data.check_images": False, "refs.num_references": 4, "refs.n_init": 1, "cleannet.query_hidden_dim": 8,
         "cleannet.reference_hidden_dim": 8, "cleannet.attention_dim": 8, "cleannet.embed_dim": 8,
         "train.steps": 20, "train.batch_size": 16, "train.eval_every": 10, "train.log_every": 10,
         "train.checkpoint_every": 10, "classifier.epochs": 1, "classifier.batch_size": 32,
         "classifier.after_verify": "soft,hard", "verify.signals": "class_mean_margin,cleannet_cosine",
         "runtime.strategy": "default"}


def _run(cwd, **changes):
    flags = [f"--config.{field}={value}" for field, value in {**FLAGS, **changes}.items()]
    result = subprocess.run([sys.executable, "-m", "cleannet_tf.cli.run", "--workdir=work", *flags], cwd=cwd,
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
                                "PYTHONPATH", "")])})
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.split(None, 1)[0]: line.split(None, 1)[1] for line in result.stdout.splitlines()
            if line.split(None, 1) and line.split(None, 1)[0] in STEPS}


def test_a_workdir_of_41cd3c4_resumes_with_every_step_complete(tmp_path):
    write_feature_dataset(tmp_path / "data", num_classes=4, per_class=60, feature_dim=8)
    first = _run(tmp_path)
    assert "already complete" not in " ".join(first.values())
    old = json.loads(FIXTURE.read_text())
    done = tmp_path / "work" / "done"
    assert sorted(path.stem for path in done.glob("*.json")) == sorted(old)
    for name, written in old.items():
        record = json.loads((done / f"{name}.json").read_text())
        # the fields as 41cd3c4 recorded them: tuples as comma strings, data.extra_verified "auto", same hash
        assert record["config"] == written["config"], name
        assert record["config_hash"] == written["config_hash"], name
        record.update(written)  # the record as 41cd3c4 wrote it
        (done / f"{name}.json").write_text(json.dumps(record, indent=2))
    again = _run(tmp_path, **{"classifier.after_verify": "('soft', 'hard')"})  # the tuple form: the same config
    assert again == {**{step: "already complete" for step in STEPS if step != "plan"},  # verified rows: no plan
                     "extract": "skipped: precomputed features (data.features)",
                     "export": first["export"]}
    assert again["export"].startswith("skipped")
