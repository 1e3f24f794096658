"""Label-noise detection: signals, verifier, thresholds and metrics, active verification, report, scores.tsv.

Imports `data`, `features`, `model`, `ops`, `atomic_io`.
"""
