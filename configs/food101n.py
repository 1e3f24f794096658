"""Food-101N (310k images, 101 classes, ~20% noise), the paper's settings.

    cleannet-extract --config=configs/food101n.py --config.data.root=/data/Food-101N_release \
        --config.data.test_root=/data/food-101 --workdir=/tmp/food101n
    # 50 of 101 classes without verification labels (transfer):
    ... --config.data.heldout_list=/data/Food-101N_release/meta/classes_heldout_50.txt

ResNet-50 fine-tuned on the noisy labels (the paper's features), then CleanNet
with K=32 references, batch 32 verified + 32 unverified, 60k steps.
Expect: extraction ~150 images/s per V100-class GPU; 310k images.
"""

from cleannet_tf.config import default_config


def get_config():
    config = default_config()
    config.data.format = "food101n"
    config.model.backbone = "resnet50"
    config.model.weights = "classifier"  # the ResNet-50 fine-tuned by cleannet-train-classifier
    config.input.resize = "center_crop"
    config.input.augment = "flip_crop"
    config.cleannet.dropout_rate = 0.2  # the paper's README example
    return config
