"""cleannet-extract: one feature vector per image -> WORKDIR/features/.

    cleannet-extract --config=configs/demo.py --workdir=/tmp/cleannet_demo

Resumable: rerun after a kill and only the unfinished shards are computed.
Skipped when --config.data.features names a precomputed .npz.
"""

from absl import app

from cleannet_tf import cli, distribute, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "extract")
    strategy = distribute.build_strategy(config.runtime.strategy)
    pipeline.run_step("extract", config, workdir, strategy=strategy)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
