"""cleannet-train-classifier: backbone + softmax trained on the noisy labels -> WORKDIR/classifier/.

    cleannet-train-classifier --config=configs/demo.py --workdir=/tmp/cleannet_demo

Reads: the dataset's images and labels; with classifier.weighting=soft|hard also
WORKDIR/verify/scores.tsv. Settings: model.*, input.*, classifier.*.
Writes: WORKDIR/classifier/ (weighting none) or WORKDIR/classifier_<weighting>/:
checkpoints, model.keras, metrics.json (test accuracy on the clean test split).
With --config.classifier.weighting=none this is the paper's first step: the
backbone fine-tuned on the noisy labels, whose features CleanNet then uses
(`model.weights=classifier`). Resumes from its checkpoints after a kill.

Fine-tuning from a block on (efficientnet_lite0): --config.classifier.train_from=block11 (or head, logits, any
block<k>) trains only that part and the softmax; without a GPU the frozen layers' outputs are computed once into
WORKDIR/frozen_cache/ (classifier.frozen_cache), so an epoch costs a fraction of full fine-tuning;
classifier.holdout_fraction and classifier.patience keep the best epoch on held-apart rows and stop early;
classifier.mixed_precision computes in float16 on GPUs.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). When it finishes, writes the config of its outputs to WORKDIR/config.train_classifier.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`, `training`.
"""

from cleannet_tf.cli import flags
from cleannet_tf.pipeline import runner
from cleannet_tf.training import distribute


def main(argv):
    config, workdir = flags.setup(argv, "train_classifier")
    strategy = distribute.build_strategy(config.runtime.strategy)
    runner.run_step("train_classifier", config, workdir, strategy=strategy)


def run():
    flags.run(main)


if __name__ == "__main__":
    run()
