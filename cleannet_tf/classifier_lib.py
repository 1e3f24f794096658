"""Old name (one release): now cleannet_tf.training.classifier and pipeline.workdir.classifier_dir."""
from cleannet_tf.pipeline.workdir import (  # noqa: F401
    classifier_dir,
)
from cleannet_tf.training.classifier import (  # noqa: F401
    WEIGHTINGS,
    ClassifierTask,
    NoisyThenFinetuneSchedule,
    evaluate_accuracy,
    train_classifier,
    weighted_cross_entropy,
)
