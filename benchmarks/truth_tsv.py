"""RELEASE.truth.tsv (made beside a release by make_realnoise.py): key, noisy and true class of every image."""

from __future__ import annotations


def read_truth(path: str) -> dict[str, str]:
    """key -> true class name, from a truth.tsv (header, then key, noisy, true)."""
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:3] != ["key", "noisy", "true"]:
            raise ValueError(f"{path}:1: expected header key, noisy, true; got {header}")
        return {fields[0]: fields[2] for fields in (line.rstrip("\n").split("\t") for line in f)}
