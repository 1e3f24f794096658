"""Old name of cleannet_tf.data.images (one release): the old module is the new one."""
import sys

from cleannet_tf.data import images as _new

sys.modules[__name__] = _new
