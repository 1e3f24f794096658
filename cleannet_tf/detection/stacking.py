"""Stacking: a small model on class-agnostic signals fitted on verification labels (StackedDetector), and the
logistic weights the verifier's stacked scoring carries in its graph (fit_signal_weights).

Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np

MODELS = ("logistic", "gradient_boosting")


class StackedDetector:
    """A small model on class-agnostic signals, fitted on verification labels: P(label correct | signals).

    Fit it on the verified rows of the verified classes; because its inputs mean the same thing in every
    class, it applies unchanged to classes without verification labels.

    Args:
        model: "logistic" (standardised inputs, L2-regularised logistic regression; default) or
            "gradient_boosting" (scikit-learn HistGradientBoostingClassifier, shallow).
        regularization: inverse L2 strength C of the logistic regression.
        seed: random state of the model.
    """

    def __init__(self, *, model: str = "logistic", regularization: float = 1.0, seed: int = 0):
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}. Received: {model!r}")
        self.model_name = model
        self.regularization = regularization
        self.seed = seed
        self.model = None

    def fit(self, signals: np.ndarray, verification: np.ndarray) -> StackedDetector:
        """signals (n, F) float, verification (n,) 0/1 (1 = label correct; both values needed). Returns self."""
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        signals = np.asarray(signals, np.float64)
        verification = np.asarray(verification)
        if signals.ndim != 2 or verification.shape != (len(signals),):
            raise ValueError(f"Need signals (n, F) and verification (n,). Received {signals.shape}, "
                             f"{verification.shape}")
        if not np.isin(verification, (0, 1)).all() or len(np.unique(verification)) < 2:
            raise ValueError("verification must be 0/1 with both values present.")
        if self.model_name == "logistic":
            self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.regularization, max_iter=1000,
                                                                            random_state=self.seed))
        else:
            self.model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=8,
                                                        min_samples_leaf=10, random_state=self.seed)
        self.model.fit(signals, verification.astype(np.int64))
        return self

    def score(self, signals: np.ndarray) -> np.ndarray:
        """(N, F) -> (N,) float64 P(label correct); low = likely wrong label."""
        if self.model is None:
            raise ValueError("StackedDetector.score called before fit.")
        return self.model.predict_proba(np.asarray(signals, np.float64))[:, 1]

    def coefficients(self, names) -> dict[str, float]:
        """Logistic weights per (standardised) signal, by name; empty for gradient boosting."""
        if self.model_name != "logistic" or self.model is None:
            return {}
        return {name: float(w) for name, w in zip(names, self.model[-1].coef_[0], strict=True)}


def fit_signal_weights(signals: np.ndarray, verification: np.ndarray, *, regularization: float = 1.0,
                       seed: int = 0) -> tuple[np.ndarray, float]:
    """Logistic regression P(correct | signals) on standardised signals, returned on raw signals.

    Args:
        signals: (n, F) own-class signals (own_class_signals). verification: (n,) 0/1, both present.
    Returns:
        weights (F,), bias: logit = signals @ weights + bias.
    """
    detector = StackedDetector(model="logistic", regularization=regularization, seed=seed).fit(signals, verification)
    scaler, logistic = detector.model[0], detector.model[-1]
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    weights = logistic.coef_[0] / scale
    bias = float(logistic.intercept_[0] - np.sum(logistic.coef_[0] * scaler.mean_ / scale))
    return weights.astype(np.float64), bias
