"""Old name of cleannet_tf.cli.run (one release)."""
from cleannet_tf.cli.run import main, run  # noqa: F401

if __name__ == "__main__":
    run()
