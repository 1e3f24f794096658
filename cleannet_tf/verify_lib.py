"""Old name (one release): now
cleannet_tf.detection.fit (the verifier's fit) and cleannet_tf.pipeline.verify (the step)."""
from cleannet_tf.detection.fit import (  # noqa: F401
    METRIC_ROWS,
    calibration_rows,
    correct_probabilities,
    detection_report,
    fit_verifier,
    knn_index,
    verified_rows,
)
from cleannet_tf.pipeline.verify import (  # noqa: F401
    load_verifier,
    run_verify,
)
from cleannet_tf.pipeline.workdir import (  # noqa: F401
    verifier_path,
    verify_dir,
)
