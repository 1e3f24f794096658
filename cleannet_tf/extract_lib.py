"""Old name (one release): now
cleannet_tf.features.extract (the library) and cleannet_tf.pipeline.extract (the step)."""
from cleannet_tf.features.extract import (  # noqa: F401
    extract_features,
    worker_task,
)
from cleannet_tf.pipeline.extract import (  # noqa: F401
    build_config_backbone,
    extractor_settings,
    open_features,
    resolve_weights,
    run_extract,
)
from cleannet_tf.pipeline.workdir import (  # noqa: F401
    features_dir,
)
