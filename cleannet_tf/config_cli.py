"""Old name of cleannet_tf.cli.config (one release)."""
from cleannet_tf.cli.config import main, run  # noqa: F401

if __name__ == "__main__":
    run()
