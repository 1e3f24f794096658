"""Active verification: which images a person should verify next, as a file the Food-101N reader takes back.

Within each class, the unverified training images whose score is nearest the threshold (where a verification
label changes the most decisions); classes with no verification label yet come first in the file, since
a verified row there also teaches the score about a class it has never seen.

    rows = propose_verification(labels, scores, verification, split, threshold=t, budget_per_class=10,
                                num_classes=C)
    write_verification_tsv("to_verify.tsv", keys[rows], guesses=scores[rows] >= t, scores=scores[rows], ...)

The file has the header and the two columns of Food-101N's `verified_train.tsv` (`class/key<TAB>0|1`), plus
columns the reader ignores (score, suggested label, why) and `split`: the verified list an answer belongs to
(`train` here; a cold-start plan, pipeline/cold_start.py, also has `val` rows). The 0/1 column holds the
model's guess; the person corrects it, and the rows are appended to `meta/verified_train.tsv` unchanged.

Imports nothing of the package.
"""

from __future__ import annotations

import numpy as np

from cleannet_tf import atomic_io

HEADER = ("class_name/key", "verification_label", "score", "suggested_label", "why", "split")


def propose_verification(labels: np.ndarray, scores: np.ndarray, verification: np.ndarray, *,
                         threshold: float | np.ndarray,
                         budget_per_class: int, num_classes: int,
                         candidates: np.ndarray | None = None, rank_scores: np.ndarray | None = None,
                         rank_threshold: float | np.ndarray | None = None) -> np.ndarray:
    """Rows to verify next.

    Args:
        labels: (N,) int noisy labels. scores: (N,) float CleanNet scores. verification: (N,) int, -1 unknown.
        threshold: the detection threshold, or (N,) each row's (its class's).
        budget_per_class: images proposed per class (at most).
        num_classes: C. candidates: optional (N,) bool rows that may be proposed (default: all unverified).
        rank_scores, rank_threshold: optional (N,) unbounded scores (the stacked logit) and the threshold in
            their units; they order rows whose scores tie (a saturated score).
    Returns:
        (M,) int64 row indices: classes without any verification label first (by their number of images,
        largest first), then the others; within a class, nearest the threshold first. Deterministic.
    """
    labels, scores, verification = np.asarray(labels), np.asarray(scores, np.float64), np.asarray(verification)
    n = len(labels)
    if scores.shape != (n,) or verification.shape != (n,):
        raise ValueError(f"labels, scores, verification must all be (N,). Received {labels.shape}, {scores.shape}, "
                         f"{verification.shape}")
    if budget_per_class < 0:
        raise ValueError(f"budget_per_class must be >= 0. Received {budget_per_class}")
    allowed = verification < 0 if candidates is None else np.asarray(candidates, bool) & (verification < 0)
    has_verification = np.bincount(labels[verification >= 0], minlength=num_classes) > 0
    images = np.bincount(labels, minlength=num_classes)
    uncertainty = np.abs(scores - threshold)
    rank_uncertainty = (uncertainty if rank_scores is None else
                        np.abs(np.asarray(rank_scores, np.float64) - (threshold if rank_threshold is None
                                                                      else rank_threshold)))
    class_order = sorted(range(num_classes), key=lambda c: (bool(has_verification[c]), -int(images[c]), c))
    chosen = []
    for c in class_order:
        rows = np.nonzero(allowed & (labels == c))[0]
        rows = rows[np.lexsort((rows, rank_uncertainty[rows], uncertainty[rows]))][:budget_per_class]
        chosen.append(rows)
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


def write_verification_tsv(path: str, keys, guesses, *, scores=None, suggested_labels=None, reasons=None,
                           splits=None) -> None:
    """Writes the proposal file (header + `key<TAB>0|1<TAB>score<TAB>suggested label<TAB>why<TAB>split`) through a
    temporary name.

    Args:
        keys: (M,) str dataset keys (`class/key.jpg`). guesses: (M,) bool/int, the 0/1 the person checks.
        scores, suggested_labels, reasons: optional (M,) columns for the person (ignored by the reader).
        splits: optional (M,) "train" / "val": the verified list each answer belongs to (default: train).
    """
    m = len(keys)
    splits = ["train"] * m if splits is None else [str(split) for split in splits]
    if len(splits) != m or not set(splits) <= {"train", "val"}:
        raise ValueError(f"{path}: splits must be {m} values among train, val.")
    scores = [""] * m if scores is None else [f"{s:.4f}" for s in scores]
    suggested_labels = [""] * m if suggested_labels is None else list(suggested_labels)
    reasons = [""] * m if reasons is None else list(reasons)
    if not len(guesses) == len(scores) == len(suggested_labels) == len(reasons) == m:
        raise ValueError(f"{path}: every column needs {m} rows.")
    with atomic_io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("\t".join(HEADER) + "\n")
        for key, guess, score, suggested, reason, split in zip(keys, guesses, scores, suggested_labels, reasons,
                                                                splits, strict=True):
            f.write(f"{key}\t{int(bool(guess))}\t{score}\t{suggested}\t{reason}\t{split}\n")


def read_verification_tsv(path: str) -> list[dict]:
    """Reads a proposal file back, in file order: [{"key", "guess" (0/1), "score" (float|None), "suggested_label",
    "why", "split"}]; a malformed row raises ValueError naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        header = tuple(f.readline().rstrip("\n").split("\t"))
        if header[:2] != HEADER[:2]:
            raise ValueError(f"{path}:1: expected header {' '.join(HEADER)!r}, got {' '.join(header)!r}")
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            fields = line.rstrip("\n").split("\t") + [""] * len(HEADER)
            if fields[1] not in ("0", "1"):
                raise ValueError(f"{path}:{line_number}: verification label must be 0 or 1, got {fields[1]!r}")
            try:
                score = float(fields[2]) if fields[2] else None
            except ValueError:
                raise ValueError(f"{path}:{line_number}: score must be a number, got {fields[2]!r}") from None
            rows.append({"key": fields[0], "guess": int(fields[1]), "score": score, "suggested_label": fields[3],
                         "why": fields[4], "split": fields[5] or "train"})
    return rows
