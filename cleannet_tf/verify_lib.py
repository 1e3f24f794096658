"""Old name (one release): now
cleannet_tf.detection.fit (the verifier's fit) and cleannet_tf.pipeline.verify (the step)."""
from cleannet_tf.detection.fit import (  # noqa: F401
    calibration_rows,
    correct_probabilities,
    detection_report,
    fit_verifier,
)
from cleannet_tf.pipeline.verify import (  # noqa: F401
    load_verifier,
    run_verify,
)
from cleannet_tf.pipeline.workdir import (  # noqa: F401
    verifier_path,
    verify_dir,
)
