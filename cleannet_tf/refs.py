"""Old name of cleannet_tf.cli.refs (one release)."""
from cleannet_tf.cli.refs import main, run  # noqa: F401

if __name__ == "__main__":
    run()
