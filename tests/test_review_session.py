"""cleannet-review's session (cleannet_tf/review/session.py): what it lists."""

from __future__ import annotations

import os

import numpy as np

from cleannet_tf.pipeline import scores_tsv
from cleannet_tf.review.session import ReviewSession


def test_browse_orders_saturated_scores_by_their_rank_score(workdir):
    _, work, config = workdir
    path = os.path.join(work, "verify", "scores.tsv")
    scores = scores_tsv.read_scores_tsv(path)
    lowest = np.argsort(scores.scores, kind="stable")[:6]
    rank = scores.scores.astype(np.float64)
    rank[lowest] = -40.0 + np.array([5, 0, 3, 1, 4, 2])  # six images the score ties at -1, their logits apart
    scores.scores[lowest] = -1.0
    scores.rank_score = rank
    scores_tsv.write_scores_tsv(path, scores)
    listed = ReviewSession(config, work, user="tester").browse(limit=6)["items"]
    assert [item["key"] for item in listed] == list(scores.keys[lowest[[1, 3, 5, 2, 4, 0]]])
    assert [item["score"] for item in listed] == [-1.0] * 6
