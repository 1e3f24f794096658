"""Old name (one release): now cleannet_tf.features.{references,kmeans} and pipeline.workdir.references_path."""
from cleannet_tf.features.kmeans import (  # noqa: F401
    KMEANS_BACKENDS,
    kmeans_float32,
    kmeans_sklearn,
)
from cleannet_tf.features.references import (  # noqa: F401
    GatherFn,
    ReferenceSets,
    build_reference_sets,
    core_rows,
)
from cleannet_tf.pipeline.workdir import (  # noqa: F401
    references_path,
)
