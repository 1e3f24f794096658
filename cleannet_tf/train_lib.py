"""Old name (one release): now cleannet_tf.training.cleannet (the task) and cleannet_tf.pipeline.train (the step)."""
from cleannet_tf.pipeline.train import (  # noqa: F401
    load_training_inputs,
    run_train,
)
from cleannet_tf.pipeline.workdir import (  # noqa: F401
    cleannet_dir,
)
from cleannet_tf.training.cleannet import (  # noqa: F401
    ENCODINGS,
    CleanNetTask,
    build_model_from_config,
    build_optimizer,
    calibration_classes,
    log_calibration_classes,
    pick_calibration_classes,
    score_pool_rows,
    train_cleannet,
    validation_metrics,
)
