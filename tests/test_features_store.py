"""The feature store (cleannet_tf/features/store.py): a corrupt shard names itself."""


import numpy as np
import pytest
from error_helpers import _truncate

from cleannet_tf.data.features_npz import CorruptFileError
from cleannet_tf.features.store import FeatureStore


def test_truncated_feature_shard_is_named(tmp_path):
    keys = np.array([f"k{i}" for i in range(10)])
    store = FeatureStore.create_or_open(str(tmp_path / "features"), keys=keys, paths=keys, feature_dim=4,
                                        shard_size=5, extractor={"x": 1})
    for shard in range(2):
        store.write_shard(shard, np.ones((5, 4), np.float32), np.ones(5, bool))
    assert store.load_all().shape == (10, 4)
    shard_path = str(tmp_path / "features" / "shard-00001.features.npy")
    _truncate(shard_path, keep=0.9)
    with pytest.raises(CorruptFileError, match=rf"^{shard_path}.*(truncated|corrupt).*cleannet-extract"):
        store.load_all()
