"""The paper's settings, to be pointed at a dataset.

    cleannet-extract --config=configs/default.py --config.data.format=tsv \
        --config.data.root=/data/mine.tsv --workdir=/tmp/mine

ResNet-50 pool5 features (2048-d), K=32 k-means++ references, CleanNet at the
paper's dimensions, SGD momentum 0.9, lr 0.01 decayed x0.1 at half of 60k steps.
"""

from cleannet_tf.config import default_config


def get_config():
    return default_config()
