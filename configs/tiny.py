"""The tiny config: a small CleanNet that trains in seconds on CPU, for the tests and quick trials.

    cleannet-run --config=configs/tiny.py --config.data.format=tsv --config.data.root=/data/mine.tsv \
        --config.data.features=/data/mine_features.npz --workdir=/tmp/tiny

K=16 references (one k-means++ start), CleanNet at 32/32/16/16 instead of the paper's dimensions, 400
steps of batch 16; the small CNN with random weights where images are read (nothing is downloaded).
The tests load it (tests/conftest.py: tiny_config) and set their own fields on top.
"""

from cleannet_tf.config import default_config


def get_config():
    config = default_config()
    config.model.backbone = "small_cnn"
    config.model.weights = "random"
    # k-means gives each far-off cluster of noisy images its own centre: K must
    # leave most centres to the true cluster for the paper's model to learn fast.
    config.refs.num_references = 16
    config.refs.n_init = 1
    config.cleannet.query_hidden_dim = 32
    config.cleannet.reference_hidden_dim = 32
    config.cleannet.attention_dim = 16
    config.cleannet.embed_dim = 16
    config.train.steps = 400
    config.train.batch_size = 16
    config.train.learning_rate = 0.05
    config.train.lr_decay_steps = 1000
    config.train.eval_every = 100
    config.train.log_every = 50
    config.train.checkpoint_every = 100
    return config
