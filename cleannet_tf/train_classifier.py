"""Old name of cleannet_tf.cli.train_classifier (one release)."""
from cleannet_tf.cli.train_classifier import main, run  # noqa: F401

if __name__ == "__main__":
    run()
