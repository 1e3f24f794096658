"""Old name (one release): now cleannet_tf.export.{names,savedmodel} and cleannet_tf.pipeline.export (the step)."""
from cleannet_tf.export.names import (  # noqa: F401
    CLASSIFIER,
    IMAGE_FEATURE,
    LABELS_FILE,
    VERIFIER,
    WARMUP_FILE,
)
from cleannet_tf.export.savedmodel import (  # noqa: F401
    build_classifier_archive,
    build_verifier_archive,
    example_of,
    next_version,
    publish,
    publish_models,
    remove_stale_temps,
    warmup_records,
    write_models_config,
)
from cleannet_tf.pipeline.export import (  # noqa: F401
    classifier_path,
    export_all,
)
