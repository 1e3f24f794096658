"""cleannet-verify: score every training image against its label -> WORKDIR/verify/.

    cleannet-verify --config=configs/demo.py --workdir=/tmp/cleannet_demo

Reads: the dataset, WORKDIR/features/ (or data.features), WORKDIR/references.npz,
WORKDIR/cleannet/model.keras. Settings: cleannet.mode, verify.*.
Writes: WORKDIR/verify/: scores.tsv (score, noisy flag, soft and hard weights,
suggested label per image), metrics.json, verifier.keras, report.html and
to_verify.tsv; the threshold is the one with the lowest detection error on
verified validation rows.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). When it finishes, writes the config of its outputs to WORKDIR/config.verify.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`.
"""

from cleannet_tf.cli import flags
from cleannet_tf.pipeline import runner
from cleannet_tf.pipeline.table import load_table


def main(argv):
    config, workdir = flags.setup(argv, "verify")
    runner.run_step("verify", config, workdir, table=load_table(config, workdir, steps=("verify",)))


def run():
    flags.run(main)


if __name__ == "__main__":
    run()
