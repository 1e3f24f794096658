"""Dataset readers and the LabelTable: no config, no WORKDIR. Imports only `ops`, `atomic_io`.
"""
