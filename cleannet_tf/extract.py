"""Old name of cleannet_tf.cli.extract (one release)."""
from cleannet_tf.cli.extract import main, run  # noqa: F401

if __name__ == "__main__":
    run()
