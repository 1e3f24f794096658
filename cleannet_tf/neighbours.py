"""Old name of cleannet_tf.features.neighbours (one release): the old module is the new one."""
import sys

from cleannet_tf.features import neighbours as _new

sys.modules[__name__] = _new
