"""Old name of cleannet_tf.detection.verifier (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import verifier as _new

sys.modules[__name__] = _new
