"""cleannet-refs: per-class reference sets (k-means++ centres of each class's features) -> WORKDIR/references.npz.

    cleannet-refs --config=configs/demo.py --workdir=/tmp/cleannet_demo

Reads: the dataset, WORKDIR/features/ (or data.features). Settings: refs.*.
Writes: WORKDIR/references.npz ((C, K, D) references, counts, class names).

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). When it finishes, writes the config of its outputs to WORKDIR/config.refs.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`.
"""

from cleannet_tf.cli import flags
from cleannet_tf.pipeline import runner
from cleannet_tf.pipeline.table import load_table


def main(argv):
    config, workdir = flags.setup(argv, "refs")
    runner.run_step("refs", config, workdir, table=load_table(config, workdir, steps=("refs",)))


def run():
    flags.run(main)


if __name__ == "__main__":
    run()
