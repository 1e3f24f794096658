"""WORKDIR/frozen_cache/<key>/ beyond the fine-tune that fills it (training/finetune.py): cleannet-extract with
model.weights=classifier reads the noisy classifier's cache instead of running its frozen layers again, and the
noisy train_classifier, the cache's owner, removes caches of other settings when it runs.

The weighted classifiers (classifier.after_verify) start from classifier.initial_weights as the noisy one does, so
their frozen layers and cache key (`finetune.frozen_settings`: backbone, the frozen weights' source, train_from,
image size, resize, max_pixels, dtype) are the noisy one's: they read its cache.
Imports `data`, `features`, `training`, `pipeline.workdir`.
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.data import table as data_table
from cleannet_tf.features import backbones, block_cache
from cleannet_tf.features.store import FeatureStore, table_fingerprint
from cleannet_tf.pipeline.workdir import classifier_output_dir, frozen_cache_dir
from cleannet_tf.training import finetune

CACHE_DTYPE = "float16"  # what cleannet-train-classifier caches in (train_finetune's default)


def resolve_initial_weights(config: ml_collections.ConfigDict) -> str:
    """classifier.initial_weights with "auto" resolved: ImageNet where the backbone has them, else random."""
    if config.classifier.initial_weights != "auto":
        return config.classifier.initial_weights
    return "imagenet" if backbones.BACKBONES[config.model.backbone].has_imagenet_weights else "random"


def expected_cache_key(config: ml_collections.ConfigDict) -> str | None:
    """The cache folder cleannet-train-classifier reads under `config`, or None when it caches nothing."""
    if not (finetune.uses_finetune(config) and finetune.resolve_frozen_cache(config)):
        return None
    settings = finetune.frozen_settings(config, resolve_initial_weights(config), CACHE_DTYPE)
    return block_cache.cache_key(settings)


def prune_frozen_caches(workdir: str, keep: str | None) -> list[str]:
    """Removes every WORKDIR/frozen_cache/<key>/ but `keep` (caches of old settings); returns what it removed."""
    root, removed = frozen_cache_dir(workdir), []
    if not os.path.isdir(root):
        return removed
    for name in sorted(os.listdir(root)):
        if name != keep:
            path = os.path.join(root, name)
            logging.info("Removing %s: the frozen layers' outputs of settings the classifier no longer uses.", path)
            atomic_io.remove_path(path)
            removed.append(path)
    return removed


def classifier_cache(config: ml_collections.ConfigDict, workdir: str,
                     table: data_table.LabelTable) -> tuple[block_cache.FrozenCache | None, str]:
    """(the noisy classifier's frozen cache, "") when model.weights=classifier features can be computed from it:
    WORKDIR/classifier/metrics.json names a cache of this train_from, and its complete "original" view was made
    with the settings `config` gives and for this table; else (None, why not)."""
    if config.model.weights != "classifier":
        return None, "model.weights is not classifier"
    try:
        with open(os.path.join(classifier_output_dir(workdir, "none"), "metrics.json")) as f:
            metrics = json.load(f)
    except (OSError, ValueError):
        return None, "no readable classifier/metrics.json"
    key = metrics.get("frozen_cache_key")
    if not metrics.get("frozen_cache") or not key:
        return None, "the classifier was not trained from a frozen cache"
    if metrics.get("train_from") != config.classifier.train_from:
        return None, f"the classifier was trained from {metrics.get('train_from')!r}"
    directory = os.path.join(frozen_cache_dir(workdir), key, block_cache.VIEWS[0])
    try:
        store = FeatureStore(directory)
    except (FileNotFoundError, ValueError) as error:
        return None, f"{directory}: {error}"
    if not (store.complete and store.finalized):
        return None, f"{directory} is not complete"
    recorded = dict(store.manifest.get("extractor", {}))
    shape, _ = recorded.pop("shape", None), recorded.pop("view", None)
    expected = finetune.frozen_settings(config, resolve_initial_weights(config), store.dtype.name)
    if recorded != json.loads(json.dumps(expected, default=str)) or not shape:
        return None, f"{directory} was made with other settings"
    if store.manifest.get("fingerprint") != table_fingerprint(table.keys, table.paths):
        return None, f"{directory} holds another table"
    return block_cache.FrozenCache({block_cache.VIEWS[0]: store}, tuple(shape)), ""
