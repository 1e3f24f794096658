"""A workdir is never stuck: a step whose DONE record is gone (killed after its last checkpoint, or the record
removed by hand) runs again and finishes, whatever its checkpoints say."""

import os

from conftest import write_feature_dataset

from cleannet_tf import config as config_lib
from cleannet_tf.pipeline import records, runner
from cleannet_tf.pipeline.workdir import done_dir

SMALL = {"refs.num_references": 16, "refs.n_init": 1, "cleannet.query_hidden_dim": 32,
         "cleannet.reference_hidden_dim": 32, "cleannet.attention_dim": 16, "cleannet.embed_dim": 16,
         "train.batch_size": 16, "train.learning_rate": 0.05, "train.steps": 100, "train.checkpoint_every": 50,
         "train.eval_every": 50, "train.log_every": 50, "classifier.epochs": 2}


def _config(overrides: dict):
    config = config_lib.default_config()
    for field, value in {**overrides, **SMALL}.items():
        section, name = field.split(".")
        config[section][name] = value
    return config_lib.validate(config)


def test_steps_resumed_at_their_last_step_finish_and_record(tmp_path):
    overrides, _, _ = write_feature_dataset(tmp_path / "data")
    config, workdir = _config(overrides), str(tmp_path / "work")
    first = runner.run_steps(config, workdir)
    assert first["train"].startswith("100 steps") and first["train_classifier"].startswith("2 epochs")
    scores = open(os.path.join(workdir, "verify", "scores.tsv")).read()
    # As a kill between the last checkpoint and the DONE record leaves it (or `rm WORKDIR/done/<step>.json`).
    os.remove(os.path.join(done_dir(workdir), "train.json"))
    again = runner.run_steps(config, workdir)
    assert again["train"].startswith("100 steps, best at 100, ") and "samples/s" in again["train"], again
    assert all(records.step_complete(step, config, workdir) for step in ("train", "verify"))
    assert open(os.path.join(workdir, "verify", "scores.tsv")).read() == scores

    os.remove(os.path.join(done_dir(workdir), "train_classifier.json"))
    third = runner.run_steps(config, workdir)
    assert third["train_classifier"].startswith("2 epochs on the noisy labels"), third
    assert records.step_complete("train_classifier", config, workdir)
