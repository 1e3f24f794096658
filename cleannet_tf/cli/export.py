"""cleannet-export: the verifier and the classifier as SavedModels for TF Serving.

    cleannet-export --config=configs/demo.py --workdir=/tmp/cleannet_demo --export_dir=saved_models

Reads: WORKDIR/verify/verifier.keras, WORKDIR/classifier*/model.keras, the dataset's class names.
Writes: EXPORT_DIR/cleannet_verifier/<version>/, EXPORT_DIR/cleannet_classifier/<version>/ (each export adds
the next version, one number for both models) and EXPORT_DIR/models.config (for cleannet-serve).
--max_pixels is the image pixel limit baked into both graphs (requests with larger images get
INVALID_ARGUMENT, before decoding).

Config: --config=configs/<x>.py, any field overridden as --config.section.field=value;
`cleannet-config --show` lists every field with its comment and default (schema:
cleannet_tf/config.py). Also writes the config it ran with to WORKDIR/config.export.json.
Errors print one line and exit 1; --debug (or --verbosity=1) adds the traceback.

Imports `data`, `pipeline`.
"""

from absl import flags

from cleannet_tf.cli import flags as cli
from cleannet_tf.data import images
from cleannet_tf.pipeline.export import export_all

_EXPORT_DIR = flags.DEFINE_string("export_dir", "saved_models", "Where the SavedModels and models.config go.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", images.DEFAULT_MAX_PIXELS,
                                   "Images with more pixels (width x height, read from the header) are refused.")


def main(argv):
    config, workdir = cli.setup(argv, "export")
    result = export_all(config, workdir, _EXPORT_DIR.value, max_pixels=_MAX_PIXELS.value)
    for name in ("verifier", "classifier", "models_config"):
        print(f"{name}: {result[name]}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
