"""Old name of cleannet_tf.training.checkpointing (one release): the old module is the new one."""
import sys

from cleannet_tf.training import checkpointing as _new

sys.modules[__name__] = _new
