"""Old name of cleannet_tf.detection.scores_tsv (one release): the old module is the new one."""
import sys

from cleannet_tf.detection import scores_tsv as _new

sys.modules[__name__] = _new
