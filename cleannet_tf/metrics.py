"""Old name of cleannet_tf.detection.metrics (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import metrics as _new

sys.modules[__name__] = _new
