"""cleannet-extract: one feature vector per image of the dataset -> WORKDIR/features/.

    cleannet-extract --config=configs/demo.py --workdir=/tmp/cleannet_demo

Reads: the dataset (data.format, data.root), the backbone (model.backbone,
model.weights; `classifier` = WORKDIR/classifier/model.keras).
Writes: WORKDIR/features/ (manifest.json, keys.npy, shard-NNNNN.{features,valid}.npy).
Resumable: rerun after a kill and only the unfinished shards are computed.
Skipped when --config.data.features names a precomputed .npz.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config.py). When it finishes, writes the config of its outputs to WORKDIR/config.extract.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.
"""

from cleannet_tf import cli, distribute, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "extract")
    strategy = distribute.build_strategy(config.runtime.strategy)
    pipeline.run_step("extract", config, workdir, strategy=strategy)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
