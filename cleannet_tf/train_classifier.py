"""cleannet-train-classifier: backbone + softmax trained on the noisy labels -> WORKDIR/classifier/.

    cleannet-train-classifier --config=configs/demo.py --workdir=/tmp/cleannet_demo

With --config.classifier.weighting=none this is the paper's first step: the
backbone fine-tuned on the noisy labels, whose features CleanNet then uses
(`model.weights=classifier`). Resumes from its checkpoints after a kill.
"""

from absl import app

from cleannet_tf import cli, distribute, pipeline


def main(argv):
    config, workdir = cli.setup(argv, "train_classifier")
    strategy = distribute.build_strategy(config.runtime.strategy)
    pipeline.run_step("train_classifier", config, workdir, strategy=strategy)


def run():
    app.run(main)


if __name__ == "__main__":
    run()
