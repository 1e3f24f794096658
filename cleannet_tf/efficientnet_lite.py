"""Old name of cleannet_tf.features.efficientnet_lite (one release): the old module is the new one."""
import sys

from cleannet_tf.features import efficientnet_lite as _new

sys.modules[__name__] = _new
