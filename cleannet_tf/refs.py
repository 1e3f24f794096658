"""cleannet-refs: per-class reference sets (k-means++ centres) -> WORKDIR/references.npz.

    cleannet-refs --config=configs/demo.py --workdir=/tmp/cleannet_demo
"""

from absl import app

from cleannet_tf import cli, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "refs")
    pipeline.run_step("refs", config, workdir)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
