"""absl entry scripts (the console scripts, `python -m cleannet_tf.cli.<step>`) and their flag plumbing (flags.py).

Imports everything; nothing imports it. Importing it imports TensorFlow quietly for the commands (startup.py).
"""

from cleannet_tf.cli import startup

startup.quiet_tensorflow_startup()
try:
    import tensorflow  # noqa: F401
except BaseException:
    startup.finish_import(failed=True)
    raise
startup.finish_import(failed=False)
