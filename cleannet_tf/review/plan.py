"""The verification plan cleannet-review walks: WORKDIR/verify/to_verify.tsv.

    class_name/key  [verification_label  score  suggested_label  why]  [split]

A header line, then one image a line in the order to verify; the first column is the key, the others are found
by their header name and may be missing (a cold-start plan has no scores). `split` says where a decision on the
row lands: `train` (WORKDIR/review/verified_train.tsv) or `val` (verified_val.tsv, making the image a verified
validation row on the next run); a plan without the column means train for every row.

Imports nothing of the package.
"""

from __future__ import annotations

SPLITS = ("train", "val")


def read_plan(path: str) -> list[dict]:
    """The plan's rows in file order: [{"key", "split", "guess" (0|1|None), "score" (float|None),
    "suggested_label", "why"}]. A malformed row raises ValueError naming the file and line."""
    rows, seen = [], set()
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if len(header) < 1 or not header[0]:
            raise ValueError(f"{path}:1: expected a header line whose first column is the key (class_name/key)")
        column = {name: i for i, name in enumerate(header)}
        for line_number, line in enumerate(f, start=2):
            if not line.strip():
                continue
            values = line.rstrip("\n").split("\t")
            fields = {name: values[i] if i < len(values) else "" for name, i in column.items()}

            key = values[0]
            if not key:
                raise ValueError(f"{path}:{line_number}: empty key")
            if key in seen:
                raise ValueError(f"{path}:{line_number}: {key!r} is listed twice")
            seen.add(key)
            split = fields.get("split", "") or "train"
            if split not in SPLITS:
                raise ValueError(f"{path}:{line_number}: split must be train or val, got {split!r}")
            guess = fields.get("verification_label", "")
            if guess not in ("", "0", "1"):
                raise ValueError(f"{path}:{line_number}: verification label must be 0 or 1, got {guess!r}")
            score = fields.get("score", "")
            try:
                score = float(score) if score else None
            except ValueError:
                raise ValueError(f"{path}:{line_number}: score must be a number, got {score!r}") from None
            rows.append({"key": key, "split": split, "guess": int(guess) if guess else None, "score": score,
                         "suggested_label": fields.get("suggested_label", ""), "why": fields.get("why", "")})
    return rows
