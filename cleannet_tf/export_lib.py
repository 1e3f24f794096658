"""Old name of cleannet_tf.export.savedmodel (one release): the old module is the new one."""
import sys

from cleannet_tf.export import savedmodel as _new

sys.modules[__name__] = _new
