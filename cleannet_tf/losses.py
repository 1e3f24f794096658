"""Old name of cleannet_tf.model.losses (one release): the old module is the new one."""
import sys

from cleannet_tf.model import losses as _new

sys.modules[__name__] = _new
