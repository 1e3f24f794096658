"""Cold start: a score that needs no verification label, and the plan of which images to verify first.

With nothing verified yet there is no threshold and no calibration, but the noisy labels and the features already
rank the images. The score is the out-of-fold own-label margin of a ridge linear classifier of the noisy labels
(signals.linear_classifier on ln(1 + x), unit rows): the features are split in `folds` class-stratified folds, each
fold scored by the classifier fitted on the others, as cleanlab's cross-validated pred_probs; an image is never
scored by a fit that saw its own label, so a memorised wrong label does not vouch for itself.

    margin_i = s_{i, y_i} - max_{c != y_i} s_{i, c}        (s = x W + b, targets +1 own class / -1 others)

It is the classifier signal the stacked score uses once verification labels exist (classifier_margin), so the plan's
rows are informative about the score that follows. margin < 0: the classifier prefers another class (the
uncalibrated decision boundary; no error rate is claimed for it).

The plan: a share of the pool (`fraction`, at least 2 rows a class), per class in proportion to its images:
    val    a stratified random sample of the class (`val_share` of its rows), never chosen by score: the
           unbiased rows the threshold is chosen and checked on;
    train  the rest, where a label is most informative: nearest the boundary (|margin| smallest), and
           `extremes_share` of them the class's most and least suspicious, so CleanNet sees right and wrong labels.
Order: round robin over classes (largest first); within a class val and train alternate in proportion, so any
prefix a reviewer verifies holds both kinds in every class.

Imports `detection.signals`, `ops`.
"""

from __future__ import annotations

import numpy as np

from cleannet_tf import ops
from cleannet_tf.detection import signals as detection_signals

SCORE_NAME = "out-of-fold linear classifier margin (noisy labels; uncalibrated)"
# Of each class's planned rows, the random validation sample: the threshold (Platt calibration on them) and the
# reported error come from these; the stacked score has a handful of weights to fit on the train rows.
VAL_SHARE = 0.75
VAL_REASON = "random sample (held apart to choose and check the threshold)"
EXTREMES_SHARE = 0.25  # of each class's training rows: half most, half least suspicious
FOLDS = 5


def out_of_fold_margin(features: np.ndarray, labels: np.ndarray, *, num_classes: int, folds: int = FOLDS,
                       seed: int = 0, l2: float = 1.0) -> dict[str, np.ndarray]:
    """The cold-start score of every row: features (N, D) raw, labels (N,) int noisy labels.

    Returns {"margin": (N,) float32 own-label margin (low = likely wrong), "suggested_label": (N,) int64 the
    classifier's best class, "suggested_score": (N,) float32 that class's margin over the next (>= 0)}.
    A class with fewer rows than `folds` still gets every row scored out of fold.
    """
    labels = ops.check_labels(labels, len(features), num_classes)
    if folds < 2:
        raise ValueError(f"folds must be >= 2. Received {folds}")
    x = ops.log_normalize(features)
    fold = stratified_folds(labels, folds, seed=seed)
    margin = np.empty(len(x), np.float32)
    suggested = np.empty(len(x), np.int64)
    suggested_score = np.empty(len(x), np.float32)
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        weights, bias = detection_signals.linear_classifier(x[~held], labels[~held], num_classes=num_classes, l2=l2)
        scores = x[held] @ weights + bias  # (n_f, C)
        _, margin[held] = ops.own_and_margin(scores, labels[held])
        best = np.argmax(scores, axis=1)
        suggested[held] = best
        _, suggested_score[held] = ops.own_and_margin(scores, best)
    return {"margin": margin, "suggested_label": suggested, "suggested_score": suggested_score}


def stratified_folds(labels: np.ndarray, folds: int, *, seed: int = 0) -> np.ndarray:
    """(N,) int fold of each row: each class's rows shuffled and dealt round robin (seeded)."""
    rng = np.random.default_rng([seed, 0xF01D])
    fold = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = (np.arange(len(rows)) + rng.integers(folds)) % folds
    return fold


def plan_size(pool_images: int, num_classes: int, fraction: float) -> int:
    """Rows in the plan: round(fraction x pool), at least 2 a class (one of each split), at most the pool."""
    return int(min(pool_images, max(round(fraction * pool_images), 2 * num_classes)))


def plan_verification(labels: np.ndarray, scores: np.ndarray, *, num_classes: int, size: int,
                      candidates: np.ndarray | None = None, val_share: float = VAL_SHARE,
                      extremes_share: float = EXTREMES_SHARE, boundary: float = 0.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The images to verify, in order, the split each answer belongs to and why (see the module docstring).

    Args:
        labels: (N,) int noisy labels. scores: (N,) float uncalibrated scores (low = suspicious).
        size: rows in the plan (plan_size). candidates: optional (N,) bool rows that may be planned (default all).
        boundary: the score where the uncalibrated decision flips (0 for a margin).
    Returns:
        rows (M,) int64, splits (M,) str "train" / "val", reasons M str (for the reviewer), M <= size.
    """
    labels = ops.check_labels(labels, len(scores), num_classes)
    scores = np.asarray(scores, np.float64)
    allowed = np.ones(len(labels), bool) if candidates is None else np.asarray(candidates, bool)
    if not 0.0 < val_share < 1.0 or not 0.0 <= extremes_share <= 1.0:
        raise ValueError(f"val_share must be in (0, 1), extremes_share in [0, 1]. Received {val_share}, "
                         f"{extremes_share}")
    rng = np.random.default_rng([seed, 0x91A7])
    available = np.bincount(labels[allowed], minlength=num_classes)
    quota = _class_quota(available, size)
    queues, reasons = [], {}
    for c in np.argsort(-available, kind="stable"):
        rows = np.flatnonzero(allowed & (labels == c))
        if not quota[c]:
            continue
        n_val = min(max(1, round(val_share * quota[c])), quota[c] - 1) if quota[c] > 1 else 1
        val = rng.choice(rows, n_val, replace=False)
        rest = np.setdiff1d(rows, val)
        train, why = _informative(rest, scores[rest], quota[c] - n_val, extremes_share, boundary)
        reasons.update(why)
        reasons.update({int(row): VAL_REASON for row in val})
        queues.append(_interleave(val, train))
    order = [item for round_ in _round_robin(queues) for item in round_]
    rows = np.asarray([row for row, _ in order], np.int64)
    splits = np.asarray([split for _, split in order], dtype="<U5")
    return rows, splits, [reasons[int(row)] for row in rows]


def _class_quota(available: np.ndarray, size: int) -> np.ndarray:
    """(C,) rows planned per class: in proportion to its images (largest remainders), at least 2, at most all."""
    total = available.sum()
    if total == 0 or size <= 0:
        return np.zeros(len(available), np.int64)
    share = size * available / total
    quota = np.minimum(np.maximum(np.floor(share).astype(np.int64), 2), available)
    for c in np.argsort(-(share - np.floor(share)), kind="stable"):  # the rest by largest remainder
        if quota.sum() >= size:
            break
        if quota[c] < available[c]:
            quota[c] += 1
    return quota


def _informative(rows: np.ndarray, scores: np.ndarray, count: int, extremes_share: float,
                 boundary: float) -> tuple[np.ndarray, dict[int, str]]:
    """`count` of `rows`: the extremes (alternately least and most suspicious), the rest nearest the boundary;
    and row -> why."""
    count = min(count, len(rows))
    if count <= 0:
        return np.zeros(0, np.int64), {}
    by_score = rows[np.lexsort((rows, scores))]  # most suspicious first
    n_extremes = min(int(round(extremes_share * count)), count)
    low, high = by_score[:(n_extremes + 1) // 2], by_score[::-1][:n_extremes // 2]
    extremes = [row for pair in zip(low, [*high, None], strict=False) for row in pair if row is not None][:n_extremes]
    taken = set(extremes)
    near = rows[np.lexsort((rows, np.abs(scores - boundary)))]
    near = [row for row in near if row not in taken][:count - len(extremes)]
    why = {int(row): "near the boundary (the noisy-label classifier is unsure)" for row in near}
    why.update({int(row): "among its class's most suspicious" for row in low})
    why.update({int(row): "among its class's least suspicious" for row in high})
    # The boundary rows first (they move the threshold most), an extreme after every few.
    return np.asarray(_interleave(np.asarray(near), np.asarray(extremes), tags=False), np.int64), why


def _interleave(first: np.ndarray, second: np.ndarray, *, tags: bool = True) -> list:
    """Merges two lists keeping each's order, spread in proportion; tags: items as (row, "val"/"train")."""
    n1, n2 = len(first), len(second)
    # Position of each item in [0, 1): the i-th of n at (i + 0.5) / n; ties go to the first list.
    keyed = [((i + 0.5) / n1, 0, int(row)) for i, row in enumerate(first)]
    keyed += [((i + 0.5) / n2, 1, int(row)) for i, row in enumerate(second)]
    keyed.sort()
    if not tags:
        return [row for _, _, row in keyed]
    return [(row, "val" if which == 0 else "train") for _, which, row in keyed]


def _round_robin(queues: list[list]):
    """Rounds of one item from each non-empty queue, in queue order."""
    depth = max((len(queue) for queue in queues), default=0)
    for i in range(depth):
        yield [queue[i] for queue in queues if i < len(queue)]
