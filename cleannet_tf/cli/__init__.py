"""absl entry scripts and flag plumbing (the console scripts). Imports everything; nothing imports it
but the old entry-module shims.

The names below are also the old module `cleannet_tf.cli` (one release).
"""
from cleannet_tf.cli.flags import (  # noqa: F401
    command_name,
    config_if_given,
    default_config_path,
    describe_error,
    reporting_errors,
    run,
    set_default_config,
    setup,
)
