"""The config schema: every shipped config validates; bad fields are named."""

import importlib.util
from pathlib import Path

import ml_collections
import pytest

from cleannet_tf import config as config_lib
from cleannet_tf.pipeline import records

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "cleannet-" in module.__doc__, f"configs/{name}.py docstring must give the command that runs it"
    return module.get_config(arg) if arg else module.get_config()


@pytest.mark.parametrize("name", ["default", "food101n", "clothing1m", "demo", "tiny", "realnoise", "photos"])
def test_shipped_configs_validate(name):
    config = _load(name)
    if not config.data.demo:
        config.data.root = "/data/somewhere"
    assert config_lib.validate(config) is config


def test_demo_digits_variant():
    config = config_lib.validate(_load("demo", "digits"))
    assert (config.data.demo, config.model.image_width) == ("digits", 32)


def test_paper_defaults():
    config = config_lib.default_config()
    assert (config.refs.num_references, config.cleannet.embed_dim, config.loss.negative_weight) == (32, 128, 5.0)
    assert (config.train.steps, config.train.batch_size, config.train.learning_rate) == (60000, 64, 0.01)


def _valid():
    config = config_lib.default_config()
    config.data.root = "/data/x"
    return config


def test_unknown_field_named():
    config = _valid()
    config.data.bogus = 1
    with pytest.raises(ValueError, match=r"config\.data\.bogus: unknown field"):
        config_lib.validate(config)


def test_typo_suggests_field():
    config = _valid()
    config.refs.num_refs = 4
    with pytest.raises(ValueError, match=r"config\.refs\.num_refs: unknown field \(did you mean num_references"):
        config_lib.validate(config)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("data.format", "imagenet", r"config\.data\.format: must be one of .*'imagenet'"),
        ("classifier.weighting", "softer", r"config\.classifier\.weighting: must be one of"),
        ("train.batch_size", 63, r"config\.train\.batch_size: must be even"),
        ("refs.num_references", 0, r"config\.refs\.num_references: must be > 0"),
        ("model.weights", "imagenet.h5", r"config\.model\.weights: must be"),
        ("cleannet.dropout_rate", 1.5, r"config\.cleannet\.dropout_rate: must be in \[0, 1\)"),
        ("extract.batch_size", "64", r"config\.extract\.batch_size: must be a number"),
        ("refs.max_samples_per_class", 10, r"config\.refs\.max_samples_per_class: must be 0 \(all\) or at least"),
        ("data.root", "", r"config\.data\.root: is required"),
        ("verify.classifier_rounds", -1, r"config\.verify\.classifier_rounds: must be >= 0"),
        ("verify.classifier_rounds", 1.5, r"config\.verify\.classifier_rounds"),
    ],
)
def test_bad_value_named(field, value, message):
    config = _valid()
    section, name = field.split(".")
    with config.unlocked(), config.ignore_type():
        config[section][name] = value
    with pytest.raises(ValueError, match=message):
        config_lib.validate(config)


def test_inconsistent_backbone_fields():
    config = _valid()
    config.model.backbone = "small_cnn"
    with pytest.raises(ValueError, match=r"config\.model\.weights: the small_cnn backbone has no ImageNet"):
        config_lib.validate(config)
    config = _valid()
    config.model.feature_dim = 64
    with pytest.raises(ValueError, match=r"config\.model\.feature_dim: is set by the backbone"):
        config_lib.validate(config)


def test_save_config_round_trip(tmp_path):
    import json

    config = _valid()
    records.save_config(config, str(tmp_path / "out" / "config.json"))
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config_lib.validate(ml_collections.ConfigDict(saved)).to_dict() == config.to_dict()  # lists: tuples
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_small_cnn_with_default_classifier_settings_validates():
    config = _valid()
    config.model.backbone, config.model.weights = "small_cnn", "random"
    assert config_lib.validate(config).classifier.initial_weights == "auto"
    config.classifier.initial_weights = "imagenet"
    with pytest.raises(ValueError, match=r"config\.classifier\.initial_weights: the small_cnn backbone has no"):
        config_lib.validate(config)
