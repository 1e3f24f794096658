"""cleannet-run: every pipeline step in order, skipping those whose outputs are complete.

    cleannet-run --config=configs/food101n.py --config.data.root=/data/Food-101N_release --workdir=/tmp/food101n
    cleannet-run --config=configs/demo.py --config.data.root=labels.tsv --workdir=/tmp/mine

Reads: the dataset (checked for what every step needs before any training).
Steps: train_classifier (weighting none) -> extract -> refs -> train -> verify ->
the classifiers of classifier.after_verify -> export. With nothing verified yet (your own photos): train,
verify, the weighted classifiers and export wait; the plan step ranks every image (uncalibrated) and writes
WORKDIR/verify/to_verify.tsv, and the run ends by printing how many labels to verify and the cleannet-review
command (docs/verification.md, "Starting with nothing verified").
Writes: WORKDIR/classifier/, features/, references.npz, cleannet/, verify/,
classifier_<w>/, saved_models/; prints one line per step, then a WARNING line for each
figure that looks like a failed run (sanity.py: a classifier near chance, epochs of few steps, a detection
barely better than flagging nothing, too few verified rows). A killed run rerun with
the same flags picks up where it stopped (each step resumes too).

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). Also writes the config it ran with to WORKDIR/config.run.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`, `training`.
"""

import json
import os
import shlex
import sys

from cleannet_tf.cli import flags
from cleannet_tf.pipeline import records, runner
from cleannet_tf.pipeline.steps import STEPS
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import verify_dir
from cleannet_tf.training import distribute


def main(argv):
    config, workdir = flags.setup(argv, "run")
    table = load_table(config, workdir, steps=STEPS)  # every step's needs, before any training
    strategy = distribute.build_strategy(config.runtime.strategy)
    done = runner.run_steps(config, workdir, table=table, strategy=strategy)
    for step, status in done.items():
        print(f"{step:<18} {status}")
    for warning in records.recorded_warnings(config, workdir):  # chance-level figures, too few verified rows
        print(f"WARNING: {warning}")
    if "plan" in done:  # nothing verified yet: what to verify, and how
        _print_next_steps(workdir)


def _print_next_steps(workdir: str) -> None:
    """The plan's size and the two commands that follow a cold-start run."""
    with open(os.path.join(verify_dir(workdir), "metrics.json")) as f:
        plan = json.load(f)["plan"]
    print(f"Scores are not calibrated yet (nothing verified). {plan['rows']} labels to verify ({plan['val']} val, "
          f"{plan['train']} train), in order: {os.path.join(verify_dir(workdir), 'to_verify.tsv')}")
    print(f"Verify them:  {shlex.join(['cleannet-review', f'--workdir={workdir}'])}")
    print(f"Then run again: {shlex.join(['cleannet-run', *sys.argv[1:]])}")


def run():
    flags.run(main)


if __name__ == "__main__":
    run()
