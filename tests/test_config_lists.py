"""The schema's tuple fields and choice lists: config.py loads no TensorFlow, its choices agree with the modules
that implement them, and the comma strings of earlier versions are still read (file, JSON, command line)."""

import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from cleannet_tf import config as config_lib
from cleannet_tf.pipeline import records


def test_importing_the_schema_loads_no_tensorflow():
    code = "import sys, cleannet_tf.config; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_choice_lists_agree_with_their_modules():
    from cleannet_tf.data import demo_render, images, table
    from cleannet_tf.detection import verifier
    from cleannet_tf.features import backbones
    from cleannet_tf.model import layers
    from cleannet_tf.model.cleannet import MODE_SCORING
    from cleannet_tf.training import classifier, cleannet, distribute

    assert config_lib.DATA_FORMATS == table.FORMATS
    assert config_lib.DEMO_DATASETS == ("", *demo_render.KINDS)
    assert config_lib.BACKBONES == tuple(backbones.BACKBONES)
    assert (config_lib.RESIZE_MODES, config_lib.AUGMENTATIONS) == (images.RESIZE_MODES, images.AUGMENTATIONS)
    assert config_lib.DEFAULT_MAX_PIXELS == images.DEFAULT_MAX_PIXELS
    assert config_lib.FEATURE_NORMS == layers.FEATURE_NORMS
    assert config_lib.WEIGHTINGS == classifier.WEIGHTINGS
    assert config_lib.CLEANNET_MODES == tuple(MODE_SCORING)
    assert config_lib.SIGNAL_NAMES == verifier.SIGNAL_NAMES
    assert config_lib.ENCODINGS == cleannet.ENCODINGS
    assert config_lib.STRATEGIES == distribute.STRATEGIES


def _valid():
    config = config_lib.default_config()
    config.data.root = "/data"
    return config


def test_comma_strings_of_a_config_file_become_tuples():
    config = _valid()
    config.verify.signals = "class_mean_margin, cleannet_cosine"
    config.classifier.after_verify = ""
    config.data.extra_verified = "a.tsv,b.tsv"
    config_lib.validate(config)
    assert config.verify.signals == ("class_mean_margin", "cleannet_cosine")
    assert config.classifier.after_verify == ()
    assert config.data.extra_verified == ("a.tsv", "b.tsv") and config.data.merge_review is False
    config.data.extra_verified = "auto"
    assert config_lib.validate(config).data.extra_verified == () and config.data.merge_review is True
    config.data.extra_verified = ""
    assert config_lib.validate(config).data.extra_verified == () and config.data.merge_review is False
    config.verify.signals = ["class_mean_margin"]  # from a saved config.json
    assert config_lib.validate(config).verify.signals == ("class_mean_margin",)


@pytest.mark.parametrize("value, message", [
    (("cleannet_cosine", "cleannet_cosine"), "distinct names"), (("cosine",), "distinct names"), ((), "distinct"),
    ((1, 2), "distinct names")])
def test_bad_signals_are_named(value, message):
    config = _valid()
    config.verify.signals = value
    with pytest.raises(ValueError, match=rf"config\.verify\.signals: (must be a tuple of strings|.*{message})"):
        config_lib.validate(config)


def _parse(*args):
    argv = ["prog", f"--config={config_lib.__file__}", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", config_lib.__file__, flag_values=values, sys_argv=argv)
    values(argv)
    return config_lib.validate(_valid_root(values.config))


def _valid_root(config):
    config.data.root = "/data"
    return config


@pytest.mark.parametrize("args, signals", [
    (["--config.verify.signals=class_mean_margin,cleannet_cosine"], ("class_mean_margin", "cleannet_cosine")),
    (["--config.verify.signals=('class_mean_margin', 'cleannet_cosine')"], ("class_mean_margin", "cleannet_cosine")),
    (["--config.verify.signals=class_mean_margin", "--config.verify.signals=knn_agreement"],
     ("class_mean_margin", "knn_agreement")),
    (["--config.verify.signals=class_mean_margin"], ("class_mean_margin",)),
])
def test_command_line_overrides_of_a_tuple_field(args, signals):
    assert _parse(*args).verify.signals == signals


def test_command_line_extra_verified_in_its_old_forms():
    config = _parse("--config.data.extra_verified=auto", "--config.classifier.after_verify=soft,hard")
    assert (config.data.extra_verified, config.data.merge_review) == ((), True)
    assert config.classifier.after_verify == ("soft", "hard")
    config = _parse("--config.data.extra_verified=", "--config.classifier.after_verify=")
    assert (config.data.extra_verified, config.data.merge_review, config.classifier.after_verify) == ((), False, ())
    config = _parse("--config.data.extra_verified='/x/a.tsv,/x/b.tsv'")  # unquoted, config_flags refuses it
    assert (config.data.extra_verified, config.data.merge_review) == (("/x/a.tsv", "/x/b.tsv"), False)
    config = _parse("--config.data.extra_verified=('/x/a.tsv',)")
    assert (config.data.extra_verified, config.data.merge_review) == (("/x/a.tsv",), True)


def test_recorded_form_is_the_comma_string_of_earlier_versions():
    config = _valid()
    form = records.recorded_form(records.select_fields(config, ("data.*", "verify.signals", "classifier.*")))
    assert form["verify.signals"] == "cleannet_cosine,cleannet_margin,class_mean_cosine,class_mean_margin"
    assert form["classifier.after_verify"] == "soft"
    assert form["data.extra_verified"] == "auto" and "data.merge_review" not in form
    config.data.merge_review, config.data.extra_verified = False, ("a.tsv", "b.tsv")
    assert records.recorded_form(records.select_fields(config, ("data.*",)))["data.extra_verified"] == "a.tsv,b.tsv"
    config.data.merge_review = True
    form = records.recorded_form(records.select_fields(config, ("data.*",)))
    assert form["data.extra_verified"] == "auto,a.tsv,b.tsv"
