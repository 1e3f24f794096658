"""cleannet-train: train CleanNet on WORKDIR's features and reference sets -> WORKDIR/cleannet/.

    cleannet-train --config=configs/demo.py --workdir=/tmp/cleannet_demo

Resumes from WORKDIR/cleannet/checkpoints after a kill. Under
--config.runtime.strategy=multi_worker, start one process per host with TF_CONFIG
set; only the chief writes WORKDIR/cleannet/.
"""

from absl import app

from cleannet_tf import cli, distribute, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "train")
    strategy = distribute.build_strategy(config.runtime.strategy)
    pipeline.run_step("train", config, workdir, strategy=strategy)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
