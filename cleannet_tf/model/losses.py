"""CleanNet's losses as pure per-sample functions (B,) and their weighted total.

With s the score (cosine), l the verification label (1 = label correct):

    verification   l (1 - s) + w_neg (1 - l) max(0, s - m)          verified samples
    reconstruction sum_d (v_d - r_d)^2 over the D normalised features  every sample
    unverified     1[s >= t] (1 - s), the pseudo-label t=0.1 held fixed  unverified samples

    other class    max(0, s' - m), s' the score against a random other class   every sample
    total = mean_b [ is_verified v + beta rec + gamma (1 - is_verified) u + delta o ] + L2
    (paper: w_neg = 5, m = 0.1, beta = gamma = 0.1, t = 0.1, delta = 0: no other-class term)

Imports nothing of the package.
"""

from __future__ import annotations

import dataclasses

from keras import ops


def verification_loss(score, verification_label, *, negative_weight: float = 5.0, margin: float = 0.1):
    """Margin cosine loss on verified pairs: (B,), (B,) -> (B,)."""
    label = ops.cast(verification_label, score.dtype)
    return label * (1.0 - score) + negative_weight * (1.0 - label) * ops.relu(score - margin)


def reconstruction_loss(normalized_features, reconstruction):
    """Squared error summed over the feature axis: (B, D), (B, D) -> (B,)."""
    return ops.sum(ops.square(normalized_features - reconstruction), axis=-1)


def unverified_loss(score, *, threshold: float = 0.1, negative_weight: float = 5.0, margin: float = 0.1):
    """The verification loss against the pseudo-label 1[s >= threshold] (no gradient through it): (B,) -> (B,).

    With threshold == margin its negative branch is always zero, so this is
    1[s >= t] (1 - s): it pulls already-similar unverified pairs closer.
    """
    pseudo_label = ops.stop_gradient(ops.cast(score >= threshold, score.dtype))
    return verification_loss(score, pseudo_label, negative_weight=negative_weight, margin=margin)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    negative_weight: float = 5.0
    margin: float = 0.1
    reconstruction_weight: float = 0.1
    unverified_weight: float = 0.1
    pseudo_label_threshold: float = 0.1
    other_class_weight: float = 0.0

    @classmethod
    def from_config(cls, loss_config) -> LossWeights:
        return cls(**{field.name: float(loss_config[field.name]) for field in dataclasses.fields(cls)})


def other_class_loss(negative_score, *, margin: float = 0.1):
    """Pushes an image away from a class it was not labelled with: (B,) -> (B,) max(0, s' - margin)."""
    return ops.relu(negative_score - margin)


def per_sample_loss(score, normalized_features, reconstruction, verification_label, is_verified,
                    weights: LossWeights = LossWeights()):
    """Per-sample total (before the mean and weight decay): all (B,) or (B, D) -> (B,).

    verification_label: (B,) 0/1 (any value where not verified); is_verified: (B,) bool/0-1.
    """
    is_verified = ops.cast(is_verified, score.dtype)
    label = ops.where(is_verified > 0, ops.cast(verification_label, score.dtype), ops.zeros_like(score))
    supervised = verification_loss(score, label, negative_weight=weights.negative_weight, margin=weights.margin)
    unsupervised = unverified_loss(score, threshold=weights.pseudo_label_threshold,
                                   negative_weight=weights.negative_weight, margin=weights.margin)
    return (is_verified * supervised
            + weights.reconstruction_weight * reconstruction_loss(normalized_features, reconstruction)
            + weights.unverified_weight * (1.0 - is_verified) * unsupervised)
