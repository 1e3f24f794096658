"""detection/fit.py crossfit_error and calibration.half_probability_score: the second run after a plan."""

import numpy as np

from cleannet_tf.detection.calibration import half_probability_score
from cleannet_tf.detection.fit import crossfit_error


def test_half_probability_score_is_where_the_calibrated_probability_is_one_half():
    assert half_probability_score((2.0, -1.0), "margin") == 0.5
    assert np.isclose(half_probability_score((2.0, -1.0), "stacked"), np.tanh(0.25))  # s = 2 sigmoid(x) - 1
    assert half_probability_score((-1.0, 0.0), "margin") is None  # a score that ranks backwards: no threshold


def _signals(n, rng):
    """Two signals; P(label correct) = sigmoid(3 s0 + s1 - 0.5)."""
    signals = rng.normal(size=(n, 2))
    correct = (rng.random(n) < 1 / (1 + np.exp(-(3 * signals[:, 0] + signals[:, 1] - 0.5)))).astype(int)
    return signals, correct


def test_crossfit_error_estimates_the_error_on_new_rows():
    rng = np.random.default_rng(0)
    signals, correct = _signals(400, rng)
    val = np.arange(100, 400)  # 100 rows chosen by score would precede them; here every row is random
    estimate = crossfit_error(signals, correct, val, seed=0)
    fresh, fresh_correct = _signals(200000, rng)
    bayes = np.mean((3 * fresh[:, 0] + fresh[:, 1] - 0.5 < 0) != (fresh_correct == 0))  # the best threshold's error
    assert abs(estimate - bayes) < 0.04
    # Fixed scores (cosine / margin scoring): only the threshold is refitted per fold.
    scores = 3 * signals[:, 0] + signals[:, 1]
    assert abs(crossfit_error(None, correct, val, scores=scores) - bayes) < 0.04
    # A fold of one kind cannot be fitted: no figure rather than a wrong one.
    assert crossfit_error(signals, np.ones(400, int), val) is None
