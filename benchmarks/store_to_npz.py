"""A finished feature store (WORKDIR/features/ of cleannet-extract) as a data.features .npz, for the benchmarks that
take --features (benchmarks/realnoise.py, operating_point.py, cold_start.py) on a fine-tuned network's features.

    python -m benchmarks.store_to_npz WORKDIR/features OUT.npz     # keys (N,), features (N, D) float32
"""

from __future__ import annotations

import sys

import numpy as np

from cleannet_tf import atomic_io
from cleannet_tf.features.store import FeatureStore


def main(argv: list[str]) -> None:
    if len(argv) != 3 or not argv[2].endswith(".npz"):
        raise SystemExit(__doc__)
    store = FeatureStore(argv[1])
    if not store.complete:
        raise SystemExit(f"{argv[1]}: the feature store is not complete (cleannet-extract has not finished)")
    features = store.load_all().astype(np.float32)
    with atomic_io.atomic_path(argv[2]) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=store.keys(), features=features)
    print(f"{argv[2]}: {features.shape[0]} rows x {features.shape[1]} dims")


if __name__ == "__main__":
    main(sys.argv)
