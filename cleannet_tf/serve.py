"""Old name of cleannet_tf.cli.serve (one release)."""
from cleannet_tf.cli.serve import main, run  # noqa: F401

if __name__ == "__main__":
    run()
