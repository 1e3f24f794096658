"""Clothing1M (1M images, 14 classes, ~38% noise), the paper's settings.

    cleannet-extract --config=configs/clothing1m.py --config.data.root=/data/clothing1M --workdir=/tmp/clothing1m

Verification labels come from images that have both a noisy and a clean label
(~25k train, ~7.5k val). References by k-means++ on at most 50k images per class
(the classes have ~70k each), which bounds memory at 50k x 2048 floats.
"""

from cleannet_tf.config import default_config


def get_config():
    config = default_config()
    config.data.format = "clothing1m"
    config.model.backbone = "resnet50"
    config.model.weights = "classifier"
    config.input.resize = "center_crop"
    config.input.augment = "flip_crop"
    config.extract.shard_size = 16384
    config.cleannet.dropout_rate = 0.2
    return config
