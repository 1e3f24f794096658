"""Old name of cleannet_tf.detection.active (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import active as _new

sys.modules[__name__] = _new
