"""Old name of cleannet_tf.detection.label_noise (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import label_noise as _new

sys.modules[__name__] = _new
