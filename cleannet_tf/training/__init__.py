"""The one training loop, distribute strategies, the CleanNet and classifier tasks on it.

Imports `data`, `features`, `model`, `detection`, `ops`, `atomic_io`.
"""
