"""Old name of the dataset readers (one release): now cleannet_tf.data.{table,food101n,clothing1m,tsv,features_npz}
and cleannet_tf.pipeline.table.load_table."""
from cleannet_tf.data.clothing1m import read_clothing1m  # noqa: F401
from cleannet_tf.data.features_npz import load_precomputed_features  # noqa: F401
from cleannet_tf.data.food101n import apply_extra_verified, read_food101n  # noqa: F401
from cleannet_tf.data.table import *  # noqa: F403 (its __all__: the table, the splits, held-out lists)
from cleannet_tf.data.tsv import read_tsv  # noqa: F401
from cleannet_tf.pipeline.table import check_for_steps, load_table  # noqa: F401
