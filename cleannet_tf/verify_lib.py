"""Old name of cleannet_tf.detection.fit (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import fit as _new

sys.modules[__name__] = _new
