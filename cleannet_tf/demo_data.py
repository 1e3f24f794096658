"""Old name (one release): now
cleannet_tf.data.demo (the dataset on disk) and cleannet_tf.data.demo_render (the images)."""
from cleannet_tf.data.demo import (  # noqa: F401
    JPEG_QUALITY,
    DemoInfo,
    generate_demo_dataset,
    holds_demo_dataset,
    read_demo_truth,
)
from cleannet_tf.data.demo_render import (  # noqa: F401
    DIGIT_PIXELS,
    KINDS,
    LOOKALIKE,
    TEST_SOURCE_FRACTION,
    class_names_of,
    digits_of_class,
    heldout_classes,
    split_source_digits,
)
