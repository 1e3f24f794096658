"""One worker of a MultiWorkerMirroredStrategy test:

    python mwms_worker.py INDEX PORTS CONFIG_JSON WORKDIR OUT [cleannet|finetune]

Trains CleanNet (default) or fine-tunes the classifier (cleannet-train-classifier's train_finetune, weighting none)
with TF_CONFIG pointing at loopback ports and saves its final weights to OUT (.npz), so the test can compare the
workers.
"""

import json
import os
import sys

index, ports, config_path, workdir, out = sys.argv[1:6]
task = sys.argv[6] if len(sys.argv) > 6 else "cleannet"
os.environ["TF_CONFIG"] = json.dumps({
    "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports.split(",")]},
    "task": {"type": "worker", "index": int(index)},
})
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cleannet_tf.pipeline.artifacts import load_training_inputs  # noqa: E402
from cleannet_tf.pipeline.table import load_table  # noqa: E402
from cleannet_tf.pipeline.workdir import classifier_output_dir, cleannet_dir, frozen_cache_dir  # noqa: E402
from cleannet_tf.training import cleannet, distribute, finetune  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()
with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
if task == "finetune":
    model, _ = finetune.train_finetune(load_table(config, workdir), config, classifier_output_dir(workdir, "none"),
                                       cache_dir=frozen_cache_dir(workdir), strategy=strategy, progress=False,
                                       initial_weights=config.classifier.initial_weights)
else:
    data, reference_sets = load_training_inputs(config, workdir)
    model, _ = cleannet.train_cleannet(data, reference_sets, config, cleannet_dir(workdir),
                                        strategy=strategy, progress=False)
np.savez(out, *[np.asarray(w) for w in model.get_weights()], is_chief=distribute.is_chief(strategy),
         replicas=strategy.num_replicas_in_sync)
