"""Old name of cleannet_tf.cli.train (one release)."""
from cleannet_tf.cli.train import main, run  # noqa: F401

if __name__ == "__main__":
    run()
