"""Old name of cleannet_tf.detection.signals (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import signals as _new

sys.modules[__name__] = _new
