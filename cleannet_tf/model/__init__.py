"""The CleanNet Keras model: layers, the model, its losses. Imports only `ops`.

Importing it registers the custom layers (`cleannet_tf>FeatureNormalization`, ...), so saved
`model.keras` files load. The names below are also the old module `cleannet_tf.model` (one release).
"""
from cleannet_tf.model.cleannet import (  # noqa: F401
    build_cleannet,
    build_query_encoder,
    build_reference_encoder,
    encode_classes,
    query_encoder_of,
    reference_encoder_of,
    score_with_class_embeddings,
    similarity_to_all_classes,
)
