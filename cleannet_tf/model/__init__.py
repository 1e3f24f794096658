"""The CleanNet Keras model: layers.py (the custom layers), cleannet.py (the model), losses.py. Imports only `ops`.

Importing layers.py registers the custom layers (`cleannet_tf>FeatureNormalization`, ...), so saved
`model.keras` files load.
"""
