"""cleannet-run: every pipeline step in order, skipping those whose outputs are complete.

    cleannet-run --config=configs/food101n.py --config.data.root=/data/Food-101N_release --workdir=/tmp/food101n

Steps (pipeline.STEPS): train_classifier (weighting none), extract, refs,
train, verify, weighted_classifiers (classifier.after_verify), export. A
killed run rerun with the same flags picks up where it stopped (each step
resumes too).
"""

from absl import app

from cleannet_tf import cli, distribute, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "run")
    strategy = distribute.build_strategy(config.runtime.strategy)
    for step, status in pipeline.run_steps(config, workdir, strategy=strategy).items():
        print(f"{step:<18} {status}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
