"""cleannet-export: the verifier and the classifier as SavedModels for TF Serving.

    cleannet-export --config=configs/demo.py --workdir=/tmp/cleannet_demo --export_dir=saved_models

Writes EXPORT_DIR/cleannet_verifier/<version>/, EXPORT_DIR/cleannet_classifier/<version>/ (each export adds
the next version, one number for both models) and EXPORT_DIR/models.config. --max_pixels is the image pixel
limit baked into both graphs (requests with larger images get INVALID_ARGUMENT, before decoding).
"""

from absl import app, flags

from cleannet_tf import cli, export_lib, input_pipeline

_EXPORT_DIR = flags.DEFINE_string("export_dir", "saved_models", "Where the SavedModels and models.config go.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", input_pipeline.DEFAULT_MAX_PIXELS,
                                   "Images with more pixels (width x height, read from the header) are refused.")


def main(argv):
    config, workdir = cli.setup(argv, "export")
    result = export_lib.export_all(config, workdir, _EXPORT_DIR.value, max_pixels=_MAX_PIXELS.value)
    for name in ("verifier", "classifier", "models_config"):
        print(f"{name}: {result[name]}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
