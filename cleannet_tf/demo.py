"""Old name of cleannet_tf.cli.demo (one release)."""
from cleannet_tf.cli.demo import main, run  # noqa: F401

if __name__ == "__main__":
    run()
