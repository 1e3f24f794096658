"""TensorProto encoding (cleannet_tf/serving/tensor_proto.py) against TensorFlow's own."""


import numpy as np
import pytest
import tensorflow as tf

from cleannet_tf.serving.tensor_proto import to_tensor_proto


@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, -2], np.int64), np.array([True, False]),
    np.zeros((0, 5), np.float32), np.float32(3.5), np.arange(6, dtype=np.int32).reshape(2, 3).T,
    np.array([b"ab", b"c"], dtype=object)])
def test_tensor_proto_round_trips_like_tensorflows(value):
    proto = to_tensor_proto(value)
    back = tf.make_ndarray(proto)
    assert back.dtype == np.asarray(value).dtype and back.shape == np.shape(value)
    np.testing.assert_array_equal(back, value)
    np.testing.assert_array_equal(back, tf.make_ndarray(tf.make_tensor_proto(value)))
