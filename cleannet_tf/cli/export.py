"""cleannet-export: the verifier and the classifier as SavedModels for TF Serving.

    cleannet-export --config=configs/demo.py --workdir=/tmp/cleannet_demo --export_dir=saved_models

Reads: WORKDIR/verify/verifier.keras, WORKDIR/classifier*/model.keras, the dataset's class names.
Writes: EXPORT_DIR/cleannet_verifier/<version>/, EXPORT_DIR/cleannet_classifier/<version>/ (each export adds
the next version, one number for both models) and EXPORT_DIR/models.config (for cleannet-serve).
--config.input.max_pixels is the image pixel limit baked into both graphs (requests with larger images get
INVALID_ARGUMENT, before decoding). Runs as cleannet-run's export step does (pipeline.run_step, under the
workdir lock); an export to WORKDIR/saved_models gets its DONE record.

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config/). Also writes the config it ran with to WORKDIR/config.export.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `pipeline`.
"""

import os

from absl import flags

from cleannet_tf.cli import flags as cli_flags
from cleannet_tf.pipeline import runner

_EXPORT_DIR = flags.DEFINE_string("export_dir", "saved_models", "Where the SavedModels and models.config go "
                                  "(a relative path is relative to the current folder).")


def main(argv):
    config, workdir = cli_flags.setup(argv, "export")
    export_dir = os.path.abspath(_EXPORT_DIR.value)
    print(f"export: {runner.run_step('export', config, workdir, export_to=export_dir)}")
    print(f"models_config: {os.path.join(export_dir, 'models.config')}")


def run():
    cli_flags.run(main)


if __name__ == "__main__":
    run()
