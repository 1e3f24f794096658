"""NumPy -> TensorProto without tf.make_tensor_proto's per-call overhead (4 µs against 16 µs for a (1, 5) array).

Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2


def to_tensor_proto(value) -> tensor_pb2.TensorProto:
    """A numeric or bool array as tensor_content (what TF Serving sends); strings and the rest via TensorFlow."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        return tf.make_tensor_proto(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return tensor_pb2.TensorProto(
        dtype=tf.as_dtype(array.dtype).as_datatype_enum,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]),
        tensor_content=array.tobytes())
