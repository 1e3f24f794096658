"""The only package that reads config and WORKDIR: paths, one runner per step, order and completion, the demo.

Imports everything but `cli`. The names below are also the old module `cleannet_tf.pipeline` (one release).
"""
from cleannet_tf.pipeline.runner import *  # noqa: F401,F403
