"""Old name of cleannet_tf.cli.verify (one release)."""
from cleannet_tf.cli.verify import main, run  # noqa: F401

if __name__ == "__main__":
    run()
