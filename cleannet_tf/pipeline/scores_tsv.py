"""WORKDIR/verify/scores.tsv: one row per training image, written by cleannet-verify, read by the classifier.

    key  label  score  noisy  weight_soft  weight_hard  suggested_label  suggested_score  p_correct  rank_score

`key` is the dataset's own key (e.g. "apple_pie/abc.jpg"), `label` and `suggested_label` are class names,
`noisy` and `weight_hard` are 0/1, the rest floats. `weight_soft` is the soft training weight from the score
alone (a calibrated P(label correct); in cleannet.mode=paper the paper's max(0, s)); `p_correct` (added after
the contract's eight columns) is the calibrated P(label correct) of every mode; files written before it lack the
column (read as NaN). `rank_score` (after p_correct) orders every image, also where `score` saturates: the
stacked logit in stacked mode (score 2 sigmoid - 1 is -1.000000 below a logit of about -15), the score itself
otherwise; sort by it to get the most suspicious images first. Files without it read it as `score`.
Verification labels are not applied here (the classifier applies them). Written through a temporary name.

Imports nothing of the package.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cleannet_tf import atomic_io

COLUMNS = ("key", "label", "score", "noisy", "weight_soft", "weight_hard", "suggested_label", "suggested_score")
EXTRA_COLUMNS = ("p_correct", "rank_score")  # after COLUMNS, optional when reading (in this order)


@dataclasses.dataclass
class ScoresTable:
    """Columns of scores.tsv, each (N,): keys/labels/suggested_labels str, noisy bool, the rest float32."""

    keys: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    noisy: np.ndarray
    weight_soft: np.ndarray
    weight_hard: np.ndarray
    suggested_labels: np.ndarray
    suggested_scores: np.ndarray
    p_correct: np.ndarray | None = None  # None: NaN (not known)
    rank_score: np.ndarray | None = None  # None: the score

    def __len__(self) -> int:
        return len(self.keys)


def write_scores_tsv(path: str, table: ScoresTable) -> None:
    """Writes `table` to `path` (header + one row per image) through a temporary name."""
    n = len(table.keys)
    if table.p_correct is None:
        table = dataclasses.replace(table, p_correct=np.full(n, np.nan, np.float32))
    if table.rank_score is None:
        table = dataclasses.replace(table, rank_score=table.scores)
    for field in dataclasses.fields(table):
        if len(getattr(table, field.name)) != n:
            raise ValueError(f"{path}: column {field.name} has {len(getattr(table, field.name))} rows, keys {n}")
    with atomic_io.atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\t".join(COLUMNS + EXTRA_COLUMNS) + "\n")
        for row in zip(table.keys, table.labels, table.scores, table.noisy, table.weight_soft, table.weight_hard,
                       table.suggested_labels, table.suggested_scores, table.p_correct, table.rank_score,
                       strict=True):
            key, label, score, noisy, soft, hard, suggested, suggested_score, p_correct, rank_score = row
            f.write(f"{key}\t{label}\t{score:.6f}\t{int(noisy)}\t{soft:.6f}\t{int(hard)}\t{suggested}\t"
                    f"{suggested_score:.6f}\t{p_correct:.6f}\t{rank_score:.7g}\n")


def read_scores_tsv(path: str) -> ScoresTable:
    """Reads a scores.tsv; a malformed row raises ValueError naming the file and line."""
    with open(path) as f:
        header = tuple(f.readline().rstrip("\n").split("\t"))
        if header not in [COLUMNS + EXTRA_COLUMNS[:i] for i in range(len(EXTRA_COLUMNS) + 1)]:
            raise ValueError(f"{path}:1: expected header {' '.join(COLUMNS + EXTRA_COLUMNS)!r}, "
                             f"got {' '.join(header)!r}")
        columns: list[list] = [[] for _ in COLUMNS + EXTRA_COLUMNS]
        for line_number, line in enumerate(f, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(header):
                raise ValueError(f"{path}:{line_number}: expected {len(header)} tab-separated fields, "
                                 f"got {len(fields)}")
            try:
                values = [fields[0], fields[1], float(fields[2]), int(fields[3]), float(fields[4]), int(fields[5]),
                          fields[6], float(fields[7]), float(fields[8]) if len(fields) > 8 else float("nan"),
                          float(fields[9]) if len(fields) > 9 else float(fields[2])]
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: {error}") from None
            for column, value in zip(columns, values, strict=True):
                column.append(value)
    keys, labels, scores, noisy, soft, hard, suggested, suggested_scores, p_correct, rank_score = columns
    return ScoresTable(
        keys=np.asarray(keys, dtype=str), labels=np.asarray(labels, dtype=str),
        scores=np.asarray(scores, np.float32), noisy=np.asarray(noisy, bool),
        weight_soft=np.asarray(soft, np.float32), weight_hard=np.asarray(hard, np.float32),
        suggested_labels=np.asarray(suggested, dtype=str), suggested_scores=np.asarray(suggested_scores, np.float32),
        p_correct=np.asarray(p_correct, np.float32), rank_score=np.asarray(rank_score, np.float64))
