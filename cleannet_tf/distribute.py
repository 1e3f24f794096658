"""Old name of cleannet_tf.training.distribute (one release): the old module is the new one."""
import sys

from cleannet_tf.training import distribute as _new

sys.modules[__name__] = _new
