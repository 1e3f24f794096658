"""The one config schema of cleannet_tf, and its validation.

Every step reads the same `ml_collections.ConfigDict`. Files in `configs/` call
`default_config()` and override a few fields; `validate()` rejects unknown or
inconsistent fields with a message naming the field and the value received.
schema.py holds the fields, their comments and defaults, and the choices of each field; validation.py the checks
and the reading of older comma-string forms. Imports nothing of the package but itself (no TensorFlow).
"""

from cleannet_tf.config.schema import (
    AUGMENTATIONS,
    BACKBONES,
    CLEANNET_MODES,
    DATA_FORMATS,
    DEFAULT_MAX_PIXELS,
    DEMO_DATASETS,
    ENCODINGS,
    FEATURE_NORMS,
    LIST_FIELDS,
    OPERATING_POINTS,
    RESIZE_MODES,
    SIGNAL_NAMES,
    STRATEGIES,
    WEIGHTINGS,
    default_config,
    get_config,
)
from cleannet_tf.config.validation import normalise_lists, validate

__all__ = [
    "AUGMENTATIONS",
    "BACKBONES",
    "CLEANNET_MODES",
    "DATA_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "DEMO_DATASETS",
    "ENCODINGS",
    "FEATURE_NORMS",
    "LIST_FIELDS",
    "OPERATING_POINTS",
    "RESIZE_MODES",
    "SIGNAL_NAMES",
    "STRATEGIES",
    "WEIGHTINGS",
    "default_config",
    "get_config",
    "normalise_lists",
    "validate",
]
