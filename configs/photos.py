"""Your photos with noisy labels: fine-tune the pretrained EfficientNet-Lite0, find the wrong labels, retrain.

    cleannet-run --config=configs/photos.py --config.data.root=/data/my_release --workdir=/tmp/photos
    # with classes nobody verified: --config.data.heldout_list=/data/my_release/meta/classes_heldout_5.txt

`data.root` is a Food-101N-layout release, a folder of class subfolders, or a .tsv/.csv list (data.format auto).
The run: the classifier fine-tuned on the noisy labels from MBConv block 11 on (128 px, ImageNet weights from the
`pretrained` extra, no download; the frozen blocks' outputs cached once under WORKDIR/frozen_cache/, a flipped
view too; 5% of the rows held apart pick the best epoch, 2 epochs without progress stop it) -> its features
(model.weights=classifier) -> CleanNet's reference sets and training -> the stacked score over the score and
margin of a linear classifier on those features, refitted once weighted by P(label correct) (configs/realnoise.py
explains the signals) -> the fine-tune again, weighted soft and hard by that score -> SavedModels. With nothing
verified the run ranks every image and plans what to verify (README, "Your own photos").

What to expect (docs/results.md, "Fine-tuned pipeline (CIFAR-10N)", benchmarks/photos_realnoise.py): on CIFAR-10N
worst (20k photos, 40% wrong labels, 5 of 10 classes never verified, 5% + 5% verified rows) wrong-label detection
error 0.130 on verified classes and 0.132 on held-out ones (F1 0.83 / 0.81; below cleanlab, kNN agreement and the
neighbour vote on the same features), test accuracy 0.707 on the noisy labels -> 0.772 weighted soft, 0.770 hard
(0.834 on the true labels). CPU cost (benchmarks/finetune_speed.py, per 1000 images and epoch at 128 px): 6.0
CPU-s from block 11, 1.6 from block 15 (--config.classifier.train_from=block15: held-out error 0.169, test accuracy
0.745), 13.2 from block 5 (train_from=block5 with classifier.select_by=loss: test accuracy 0.795 soft, 0.808 hard,
0.865 on the true labels, held-out error 0.146), 33.8 for every layer; the block-11 run took 33 CPU-minutes in all.
"""

import os
import runpy


def get_config():
    # configs/realnoise.py's score (stacked classifier signals, one refit) and CleanNet settings, on these features.
    config = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "realnoise.py"))["get_config"]()
    config.model.weights = "classifier"  # features of the fine-tuned classifier (WORKDIR/classifier/model.keras)
    config.model.image_height = 128
    config.model.image_width = 128
    config.input.augment = "flip"  # cached: a flipped view of the frozen part's outputs, one view drawn per epoch
    config.classifier.initial_weights = "imagenet"
    config.classifier.train_from = "block11"
    config.classifier.frozen_cache = "auto"  # on without a GPU
    config.classifier.epochs = 5
    config.classifier.learning_rate = 0.01
    config.classifier.holdout_fraction = 0.05
    config.classifier.patience = 2
    config.classifier.after_verify = ("soft", "hard")
    return config
