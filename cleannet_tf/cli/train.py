"""cleannet-train: train CleanNet on the features, reference sets and verification labels -> WORKDIR/cleannet/.

    cleannet-train --config=configs/demo.py --workdir=/tmp/cleannet_demo

Reads: the dataset (its verified rows), WORKDIR/features/ (or data.features),
WORKDIR/references.npz. Settings: cleannet.*, loss.*, train.*.
Writes: WORKDIR/cleannet/ (checkpoints/, model.keras, metrics.json).
Resumes from WORKDIR/cleannet/checkpoints after a kill. Under
--config.runtime.strategy=multi_worker, start one process per host with TF_CONFIG
set; only the chief writes WORKDIR/cleannet/.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). When it finishes, writes the config of its outputs to WORKDIR/config.train.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`, `training`.
"""

from cleannet_tf.cli import flags
from cleannet_tf.pipeline import runner
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.training import distribute


def main(argv):
    config, workdir = flags.setup(argv, "train")
    table = load_table(config, workdir, steps=("train",))  # what training needs, before it starts
    strategy = distribute.build_strategy(config.runtime.strategy)
    runner.run_step("train", config, workdir, strategy=strategy, table=table)


def run():
    flags.run(main)


if __name__ == "__main__":
    run()
