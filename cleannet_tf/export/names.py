"""What an export is called, shared by export/ and serving/ (no TensorFlow import): the model names, the files
beside a SavedModel, the tf.Example feature of an image, the gRPC message limit both ends use. Imports nothing.
"""

import os

VERIFIER, CLASSIFIER = "cleannet_verifier", "cleannet_classifier"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
LABELS_FILE = os.path.join("assets.extra", "labels.txt")
IMAGE_FEATURE = "image/encoded"
MAX_MESSAGE_BYTES = 256 << 20  # gRPC send/receive limit of the server and the client
