"""cleannet-verify: score every training image against its label -> WORKDIR/verify/.

    cleannet-verify --config=configs/demo.py --workdir=/tmp/cleannet_demo

Writes scores.tsv (score, noisy flag, soft and hard weights, suggested label per
image), metrics.json and verifier.keras; the threshold is the one with the lowest
detection error on verified validation rows.
"""

from absl import app

from cleannet_tf import cli, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "verify")
    pipeline.run_step("verify", config, workdir)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
