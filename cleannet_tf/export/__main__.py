"""Old entry `python -m cleannet_tf.export` (one release): runs cleannet_tf.cli.export."""
from cleannet_tf.cli.export import run

if __name__ == "__main__":
    run()
