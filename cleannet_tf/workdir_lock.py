"""Old name of cleannet_tf.pipeline.lock (one release): the old module is the new one."""
import sys

from cleannet_tf.pipeline import lock as _new

sys.modules[__name__] = _new
