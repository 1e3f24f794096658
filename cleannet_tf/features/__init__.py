"""Backbones, feature extraction and the feature store, reference sets, neighbours, the training pool.

Imports `data`, `model`, `ops`, `atomic_io`.
"""
