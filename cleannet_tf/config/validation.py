"""`validate`: a config against the schema (schema.py) (unknown fields, types, choices,
consistency), after `normalise_lists` reads the older comma-string forms of the tuple fields. Imports only the schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections

from cleannet_tf.config.schema import (
    AUGMENTATIONS,
    BACKBONES,
    CLEANNET_MODES,
    DATA_FORMATS,
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
)


def _fail(field: str, message: str, value: Any) -> None:
    raise ValueError(f"config.{field}: {message}. Received: {value!r}")


def _check_choice(config: ml_collections.ConfigDict, field: str, choices) -> None:
    value = _get(config, field)
    if value not in choices:
        _fail(field, f"must be one of {', '.join(repr(c) for c in choices)}", value)


def _check_positive(config: ml_collections.ConfigDict, field: str, *, allow_zero=False) -> None:
    value = _get(config, field)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, "must be a number", value)
    if value < 0 or (value == 0 and not allow_zero):
        _fail(field, "must be >= 0" if allow_zero else "must be > 0", value)


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
    node = config
    for part in field.split("."):
        node = node[part]
    return node


def _is_section(value: Any) -> bool:
    return isinstance(value, (Mapping, ml_collections.ConfigDict))


def _check_schema(config: Mapping, schema: Mapping, prefix: str = "") -> None:
    """Rejects fields the schema does not have, and wrong types."""
    for name in config:
        path = f"{prefix}{name}"
        if name not in schema:
            close = [k for k in schema if k.startswith(name[:3])]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"config.{path}: unknown field{hint}.")
        expected, value = schema[name], config[name]
        if _is_section(expected):
            if not _is_section(value):
                _fail(path, "must be a section", value)
            _check_schema(value, expected, prefix=f"{path}.")
        elif isinstance(expected, bool):
            if not isinstance(value, bool):
                _fail(path, "must be True or False", value)
        elif isinstance(expected, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(path, "must be a number", value)
            if isinstance(expected, int) and not isinstance(expected, bool) and not float(value).is_integer():
                _fail(path, "must be a whole number", value)
        elif isinstance(expected, str) and not isinstance(value, str):
            _fail(path, "must be a string", value)
        elif isinstance(expected, tuple) and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
            _fail(path, "must be a tuple of strings", value)
    for name in schema:
        if name not in config:
            raise ValueError(f"config.{prefix}{name}: missing field.")


def _names(value: Any) -> tuple[str, ...] | Any:
    """("a", "b") from "a,b", ["a", "b"] or ("a,b",); other values as they are (the schema check names them)."""
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not all(isinstance(item, str) for item in value):
        return value
    return tuple(name.strip() for item in value for name in item.split(",") if name.strip())


def _normalise_list(config: ml_collections.ConfigDict, section: ml_collections.ConfigDict, name: str) -> None:
    raw = section[name]  # "a,b" (a config file), ["a"] (JSON), ("a,b",) (--config.x=a,b)
    del section[name]  # a type-safe ConfigDict would turn the tuple back into the list or string it held
    section[name] = _names(raw)
    if name == "extra_verified" and "merge_review" in config.data:
        legacy_string = isinstance(raw, str) or (isinstance(raw, (tuple, list)) and len(raw) == 1
                                                 and isinstance(raw[0], str) and ("," in raw[0] or not raw[0]))
        paths = section[name]
        if isinstance(paths, tuple) and "auto" in paths:
            section.merge_review = True
            section[name] = tuple(path for path in paths if path != "auto")
        elif legacy_string:
            section.merge_review = False


def normalise_lists(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Makes each of LIST_FIELDS a tuple of names (in place). data.extra_verified as the string it was before
    data.merge_review (or one such command line value): "auto" sets merge_review, "" or paths clear it."""
    with config.unlocked():
        for field in LIST_FIELDS:
            section, name = field.split(".")
            if section in config and name in config[section]:
                _normalise_list(config, config[section], name)
    return config


def validate(config: ml_collections.ConfigDict, *, needs_data: bool = True) -> ml_collections.ConfigDict:
    """Checks `config` against the schema and for consistency; returns it.

    needs_data=False: the data come as arrays (CleanNetDetector), so data.root may be empty.
    The LIST_FIELDS of `config` are made tuples first (`normalise_lists`).

    Raises:
        ValueError: naming the first bad field and the value received.
    """
    normalise_lists(config)
    _check_schema(config, default_config())
    _check_choice(config, "data.format", DATA_FORMATS)
    _check_choice(config, "data.demo", DEMO_DATASETS)
    if needs_data and not config.data.root and not config.data.demo:
        _fail("data.root", "is required (the dataset root, or the .tsv/.csv file itself)", config.data.root)
    if config.data.demo and not config.data.root and config.data.format not in ("auto", "food101n"):
        _fail("data.format", "must be 'food101n' when data.demo generates into WORKDIR/demo_data (or 'auto': the "
              "demo is written in that layout)", config.data.format)
    if not 0.0 <= config.data.demo_noise_rate < 1.0:
        _fail("data.demo_noise_rate", "must be in [0, 1)", config.data.demo_noise_rate)
    _check_positive(config, "data.demo_images_per_class", allow_zero=True)
    _check_positive(config, "data.demo_heldout", allow_zero=True)
    if config.data.features and not config.data.features.endswith(".npz"):
        _fail("data.features", "must be an .npz file with arrays 'keys' and 'features'", config.data.features)

    _check_choice(config, "model.backbone", BACKBONES)
    weights = config.model.weights
    if weights not in ("random", "imagenet", "classifier") and not weights.endswith((".keras", ".weights.h5")):
        _fail("model.weights", "must be 'random', 'imagenet', 'classifier', or a path ending in .keras or .weights.h5",
              weights)
    if weights == "imagenet" and config.model.backbone == "small_cnn":
        _fail("model.weights", "the small_cnn backbone has no ImageNet weights", weights)
    for field in ("model.image_height", "model.image_width"):
        _check_positive(config, field)
        if _get(config, field) < 16:
            _fail(field, "must be at least 16 pixels", _get(config, field))
    _check_positive(config, "model.feature_dim", allow_zero=True)
    if config.model.feature_dim and config.model.backbone != "small_cnn":
        _fail("model.feature_dim", "is set by the backbone; only small_cnn takes it", config.model.feature_dim)
    _check_choice(config, "input.resize", RESIZE_MODES)
    _check_choice(config, "input.augment", AUGMENTATIONS)
    _check_positive(config, "input.parallel_calls", allow_zero=True)
    _check_positive(config, "input.max_pixels")

    for field in ("extract.batch_size", "extract.shard_size", "refs.num_references", "refs.n_init", "refs.max_iter",
                  "refs.tol", "train.steps", "train.batch_size", "train.learning_rate", "train.eval_every",
                  "train.checkpoint_every", "train.log_every", "train.lr_decay_steps", "classifier.epochs",
                  "classifier.batch_size", "classifier.learning_rate", "classifier.finetune_learning_rate",
                  "cleannet.query_hidden_dim",
                  "cleannet.reference_hidden_dim", "cleannet.attention_dim", "cleannet.embed_dim"):
        _check_positive(config, field)
    _check_positive(config, "refs.max_samples_per_class", allow_zero=True)
    _check_positive(config, "classifier.finetune_epochs", allow_zero=True)
    if config.refs.max_samples_per_class and config.refs.max_samples_per_class < config.refs.num_references:
        _fail("refs.max_samples_per_class", "must be 0 (all) or at least refs.num_references",
              config.refs.max_samples_per_class)
    if config.train.batch_size % 2:
        _fail("train.batch_size", "must be even (half verified, half unverified samples per step)",
              config.train.batch_size)

    _check_choice(config, "cleannet.feature_norm", FEATURE_NORMS)
    _check_choice(config, "cleannet.mode", CLEANNET_MODES)
    if not 0.0 < config.refs.core_fraction <= 1.0:
        _fail("refs.core_fraction", "must be in (0, 1]", config.refs.core_fraction)
    _check_choice(config, "cleannet.encoding", ENCODINGS)
    if not 0.0 <= config.cleannet.dropout_rate < 1.0:
        _fail("cleannet.dropout_rate", "must be in [0, 1)", config.cleannet.dropout_rate)
    for field in ("cleannet.weight_decay", "loss.negative_weight", "loss.reconstruction_weight",
                  "loss.unverified_weight", "loss.other_class_weight", "train.momentum", "verify.classifier_rounds",
                  "verify.budget_per_class", "verify.report_classes"):
        _check_positive(config, field, allow_zero=True)
    if not 0.0 < config.train.lr_decay_factor <= 1.0:
        _fail("train.lr_decay_factor", "must be in (0, 1]", config.train.lr_decay_factor)
    if not 0.0 <= config.cleannet.calibration_fraction < 1.0:
        _fail("cleannet.calibration_fraction", "must be in [0, 1)", config.cleannet.calibration_fraction)
    if not 0.0 < config.verify.plan_fraction <= 1.0:
        _fail("verify.plan_fraction", "must be in (0, 1]", config.verify.plan_fraction)
    if not 0.0 < config.verify.class_mean_keep <= 1.0:
        _fail("verify.class_mean_keep", "must be in (0, 1]", config.verify.class_mean_keep)
    _check_choice(config, "verify.operating_point", OPERATING_POINTS)
    if config.verify.operating_point == "probability" and config.cleannet.mode != "stacked":
        _fail("verify.operating_point", "probability needs cleannet.mode=stacked (its P(label correct))",
              config.verify.operating_point)
    signals = config.verify.signals
    if not signals or not set(signals) <= set(SIGNAL_NAMES) or len(set(signals)) != len(signals):
        _fail("verify.signals", f"must be distinct names among {SIGNAL_NAMES}", signals)
    _check_choice(config, "classifier.weighting", WEIGHTINGS)
    if not set(config.classifier.after_verify) <= {"soft", "hard"}:
        _fail("classifier.after_verify", "must be a tuple of soft, hard", config.classifier.after_verify)
    initial = config.classifier.initial_weights
    if initial not in ("auto", "random", "imagenet") and not initial.endswith((".keras", ".weights.h5")):
        _fail("classifier.initial_weights",
              "must be 'auto', 'random', 'imagenet', or a path ending in .keras or .weights.h5", initial)
    if initial == "imagenet" and config.model.backbone == "small_cnn":
        _fail("classifier.initial_weights", "the small_cnn backbone has no ImageNet weights", initial)
    train_from, cache = config.classifier.train_from, config.classifier.frozen_cache
    block_names = tuple(f"block{k}" for k in range(16))  # efficientnet_lite0's MBConv blocks
    _check_choice(config, "classifier.train_from", ("all", *block_names, "head", "logits"))
    if train_from != "all" and config.model.backbone != "efficientnet_lite0":
        _fail("classifier.train_from", "only model.backbone='efficientnet_lite0' trains from a block on; 'all' "
              "trains every layer", train_from)
    if train_from != "all" and config.data.features:
        _fail("classifier.train_from", "needs images: data.features trains a softmax on fixed features", train_from)
    _check_choice(config, "classifier.frozen_cache", ("auto", "on", "off"))
    if cache == "on" and train_from == "all":
        _fail("classifier.frozen_cache", "needs frozen layers: set classifier.train_from to a block", cache)
    if cache == "on" and config.input.augment not in ("none", "flip"):
        _fail("classifier.frozen_cache", f"caches the image and its mirror only, not input.augment="
              f"{config.input.augment!r}: use 'none' or 'flip', or frozen_cache='off'", cache)
    if cache == "on" and config.runtime.strategy == "multi_worker":
        _fail("classifier.frozen_cache", "caches on one host (every worker would write the whole cache): use "
              "'auto' (off under runtime.strategy='multi_worker') or 'off'", cache)
    if not 0.0 <= config.classifier.holdout_fraction <= 0.5:
        _fail("classifier.holdout_fraction", "must be in [0, 0.5]", config.classifier.holdout_fraction)
    _check_positive(config, "classifier.patience", allow_zero=True)
    _check_choice(config, "classifier.select_by", ("accuracy", "loss"))
    if config.classifier.patience and not config.classifier.holdout_fraction:
        _fail("classifier.patience", "early stopping needs held-apart rows: set classifier.holdout_fraction > 0",
              config.classifier.patience)
    if config.classifier.patience and config.classifier.finetune_epochs:
        _fail("classifier.patience", "early stopping would skip the classifier.finetune_epochs phase: set one "
              "of them to 0", config.classifier.patience)
    _check_choice(config, "classifier.mixed_precision", ("auto", "on", "off"))
    _check_choice(config, "runtime.strategy", STRATEGIES)
    _check_positive(config, "runtime.logical_cpu_devices", allow_zero=True)
    return config
