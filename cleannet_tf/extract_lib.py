"""Old name of cleannet_tf.features.extract (one release): the old module is the new one."""
import sys

from cleannet_tf.features import extract as _new

sys.modules[__name__] = _new
