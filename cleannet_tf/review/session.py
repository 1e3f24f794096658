"""What cleannet-review shows: the dataset, cleannet-verify's outputs and the person's decisions, joined by key.

    session = ReviewSession(config, workdir, user="ana")
    session.queue()              # the plan's order (to_verify.tsv), decided images left out, grouped by class
    session.decide(key, "relabel", label="ramen")
    session.references(c)        # the class's reference images
    session.neighbours(key, 12)  # nearest images by cosine on ln(1 + x) features

Inputs: the table (load_table, which also merges WORKDIR/review/verified_{train,val}.tsv through
data.merge_review), WORKDIR/verify/{scores.tsv, to_verify.tsv (the plan, review/plan.py), metrics.json}, the features
(pipeline/artifacts.py open_features) and WORKDIR/references.npz. Bad input raises `ReviewError` (the server's 4xx).

A decision on a plan row lands by the row's split (verified_train.tsv or verified_val.tsv); any other training image
reviewed (browse) lands in verified_train.tsv.

Imports `config`, `data`, `detection`, `features`, `pipeline`, `review.plan`, `review.store`.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict

import ml_collections
import numpy as np
from absl import logging

from cleannet_tf.data import images, table
from cleannet_tf.detection import signals
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.pipeline import scores_tsv
from cleannet_tf.pipeline.artifacts import open_features
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import references_path, review_dir, verify_dir
from cleannet_tf.review.plan import read_plan
from cleannet_tf.review.store import DecisionStore

REFERENCE_IMAGES = 8  # reference images shown per class
THUMBNAIL_SIZES = (96, 160, 320)
_NEIGHBOUR_BLOCK = 65536  # rows per block of the exact neighbour search


class ReviewError(ValueError):
    """Bad request input; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def read_metrics(workdir: str) -> dict | None:
    """WORKDIR/verify/metrics.json, or None when cleannet-verify has not run."""
    path = os.path.join(verify_dir(workdir), "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class _Snapshot:
    """One consistent read of the table and of cleannet-verify's outputs (replaced whole by `reload`)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, review_val_keys: set[str]):
        """review_val_keys: the keys decided into WORKDIR/review/verified_val.tsv (val rows of the table now)."""
        output = verify_dir(workdir)
        for name in ("scores.tsv", "to_verify.tsv"):
            if not os.path.exists(os.path.join(output, name)):
                raise FileNotFoundError(f"{os.path.join(output, name)} not found: run cleannet-verify first.")
        self.table = load_table(config, workdir)
        self.row_of = {key: row for row, key in enumerate(self.table.keys)}
        self.metrics = read_metrics(workdir) or {}
        self.threshold = float(self.metrics.get("threshold", 0.0))
        scores = scores_tsv.read_scores_tsv(os.path.join(output, "scores.tsv"))
        class_index = {name: c for c, name in enumerate(self.table.class_names)}
        # Per table row: score, suggested class (-1 / NaN where scores.tsv has no row, e.g. test rows).
        n = len(self.table)
        self.score = np.full(n, np.nan, np.float32)
        self.suggested = np.full(n, -1, np.int32)
        self.suggested_score = np.full(n, np.nan, np.float32)
        self.rank = np.full(n, np.nan, np.float64)  # scores.tsv's rank_score: orders the images a score ties
        stale = 0
        for i, key in enumerate(scores.keys):
            row = self.row_of.get(str(key))
            if row is None or scores.suggested_labels[i] not in class_index:
                stale += 1
                continue
            self.score[row] = scores.scores[i]
            self.suggested[row] = class_index[scores.suggested_labels[i]]
            self.suggested_score[row] = scores.suggested_scores[i]
            self.rank[row] = scores.rank_score[i]
        if stale:
            logging.warning("%s: %d rows name keys or classes not in the dataset; ignored.", output, stale)
        self.scored = np.nonzero(~np.isnan(self.score))[0]
        self.flagged = self.score < self.threshold  # NaN rows: False
        self.proposals = []  # (row, plan entry), file order
        for entry in read_plan(os.path.join(output, "to_verify.tsv")):
            row = self.row_of.get(entry["key"])
            ours = entry["split"] == "val" and entry["key"] in review_val_keys  # a val row by a decision here
            if row is None or not (self.table.split[row] == table.SPLIT_TRAIN or ours):
                stale += 1
                continue
            self.proposals.append((row, entry))
        self.plan_split = {entry["key"]: entry["split"] for _, entry in self.proposals}


class ReviewSession:
    """The state cleannet-review serves; thread-safe (decisions go through the store's lock)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, user: str):
        self.config, self.workdir, self.user = config, os.path.abspath(workdir), user
        self.store = DecisionStore(review_dir(self.workdir))
        self._lock = threading.RLock()
        self._thumbnails: OrderedDict = OrderedDict()
        self._features = None
        self._reference_rows: dict[int, list[int]] = {}
        self.snapshot = _Snapshot(config, self.workdir, self._review_val_keys())

    def _review_val_keys(self) -> set[str]:
        return {key for key, value in self.store.snapshot().items() if value["split"] == "val"}

    def reload(self) -> None:
        """Reads the table and WORKDIR/verify/ again (after a retrain)."""
        snapshot = _Snapshot(self.config, self.workdir, self._review_val_keys())
        with self._lock:
            self.snapshot, self._features, self._reference_rows = snapshot, None, {}

    # ------------------------------------------------------------------ rows and decisions

    def row_of(self, key) -> int:
        if not isinstance(key, str) or not key:
            raise ReviewError(f"'key' must be a non-empty string. Received {key!r}")
        row = self.snapshot.row_of.get(key)
        if row is None:
            raise ReviewError(f"unknown key {key!r}: not an image of the dataset", status=404)
        return row

    def class_id(self, label) -> int:
        """A class given by name or id; raises ReviewError when unknown or out of range."""
        names = self.snapshot.table.class_names
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise ReviewError(f"'label' must be a class name or a class id. Received {label!r}")
        if isinstance(label, int):
            if not 0 <= label < len(names):
                raise ReviewError(f"label {label} out of range: the dataset has {len(names)} classes "
                                  f"(ids 0 to {len(names) - 1})")
            return label
        if label not in names:
            raise ReviewError(f"unknown class {label!r} (not one of the dataset's {len(names)} classes)")
        return names.index(label)

    def item(self, row: int, decisions: dict | None = None) -> dict:
        """What the page shows of one image."""
        s = self.snapshot
        t = s.table
        key = str(t.keys[row])
        decisions = self.store.snapshot() if decisions is None else decisions
        score = s.score[row]
        return {"key": key, "label": t.class_names[t.labels[row]], "label_id": int(t.labels[row]),
                "score": None if np.isnan(score) else round(float(score), 4), "flagged": bool(s.flagged[row]),
                "suggested": t.class_names[s.suggested[row]] if s.suggested[row] >= 0 else None,
                "suggested_score": None if np.isnan(s.suggested_score[row])
                else round(float(s.suggested_score[row]), 4),
                "split": table.SPLITS[t.split[row]], "verified": int(t.verification[row]),
                "plan_split": s.plan_split.get(key), "decision": decisions.get(key)}

    def decide(self, key, decision, label=None, *, client: str | None = None) -> dict:
        """Records a decision on a training image or a plan row; `label` (name or id) is the right class of a
        relabel. It lands in verified_val.tsv when the plan's row says split val, else verified_train.tsv."""
        row = self.row_of(key)
        t = self.snapshot.table
        split = self.snapshot.plan_split.get(key, "train")
        if t.split[row] != table.SPLIT_TRAIN and split != "val":
            raise ReviewError(f"{key!r} is a {table.SPLITS[t.split[row]]} row: its labels are kept for "
                              "evaluation; only training images are reviewed")
        if decision not in ("correct", "wrong", "relabel"):
            raise ReviewError(f"'decision' must be correct, wrong or relabel. Received {decision!r}")
        chosen = None
        if decision == "relabel":
            if label is None:
                raise ReviewError("a relabel decision needs 'label', the right class")
            chosen_id = self.class_id(label)
            if chosen_id == t.labels[row]:
                raise ReviewError(f"{t.class_names[chosen_id]!r} is the given label: send decision 'correct'")
            chosen = t.class_names[chosen_id]
        elif label is not None:
            raise ReviewError(f"'label' goes with decision 'relabel' only (got decision {decision!r})")
        self.store.decide(key, decision, label=t.class_names[t.labels[row]], chosen=chosen, user=self.user,
                          client=client, split=split)
        return self.item(row)

    def undo(self, *, key=None, client: str | None = None) -> dict | None:
        """Takes back the decision on `key` (None: the newest one `client` made); the item, or None."""
        if key is not None:
            self.row_of(key)
        undone = self.store.undo(user=self.user, client=client, key=key)
        if undone is None:
            return None
        row = self.snapshot.row_of.get(undone[0])
        return self.item(row) if row is not None else {"key": undone[0], "decision": undone[1]}

    # ------------------------------------------------------------------ pages

    def queue(self) -> dict:
        """The undecided plan rows grouped by class (the plan's order), with counts per class; `left`: the plan's
        rows of the class not yet decided, by split (what the plan still asks for before calibrating)."""
        s = self.snapshot
        decisions = self.store.snapshot()
        classes: OrderedDict[int, dict] = OrderedDict()
        for row, entry in s.proposals:
            c = int(s.table.labels[row])
            group = classes.setdefault(c, {"class": s.table.class_names[c], "why": entry["why"], "proposed": 0,
                                           "decided": 0, "correct": 0, "wrong": 0, "relabel": 0,
                                           "left": {"train": 0, "val": 0}, "items": []})
            group["proposed"] += 1
            decision = decisions.get(entry["key"])
            if decision is None:
                group["left"][entry["split"]] += 1  # decisions the plan still asks for before calibrating
                group["items"].append({**self.item(row, decisions), "why": entry["why"], "guess": entry["guess"]})
            else:
                group["decided"] += 1
                group[decision["decision"]] += 1
        return {"classes": list(classes.values())}

    def browse(self, *, label=None, flagged=None, suggested=None, decided=None, offset: int = 0,
               limit: int = 60) -> dict:
        """Scored images filtered by class / flagged / suggested class / decided, lowest rank score first."""
        s = self.snapshot
        rows = s.scored
        if label not in (None, ""):
            rows = rows[s.table.labels[rows] == self.class_id(label)]
        if suggested not in (None, ""):
            rows = rows[s.suggested[rows] == self.class_id(suggested)]
        if flagged not in (None, ""):
            if flagged not in ("1", "0"):
                raise ReviewError(f"'flagged' must be 1, 0 or empty. Received {flagged!r}")
            rows = rows[s.flagged[rows] == (flagged == "1")]
        decisions = self.store.snapshot()
        if decided not in (None, ""):
            if decided not in ("1", "0"):
                raise ReviewError(f"'decided' must be 1, 0 or empty. Received {decided!r}")
            is_decided = np.array([str(s.table.keys[r]) in decisions for r in rows], bool)
            rows = rows[is_decided == (decided == "1")]
        rows = rows[np.lexsort((rows, s.rank[rows]))]
        page = rows[offset:offset + limit]
        return {"total": int(len(rows)), "offset": offset, "items": [self.item(int(r), decisions) for r in page]}

    def summary(self) -> dict:
        s = self.snapshot
        decisions = self.store.snapshot()
        counts = {name: 0 for name in ("correct", "wrong", "relabel")}
        for value in decisions.values():
            counts[value["decision"]] += 1
        proposed = {entry["key"] for _, entry in s.proposals}
        return {"workdir": self.workdir, "user": self.user, "classes": list(s.table.class_names),
                "threshold": s.threshold, "decided": len(decisions), "counts": counts,
                "proposed": len(proposed), "proposed_decided": len(proposed & decisions.keys()),
                "images": int(len(s.scored)), "flagged": int(s.flagged.sum()),
                "review_file": self.store.tsv_path}

    # ------------------------------------------------------------------ features

    def _feature_source(self):
        with self._lock:
            if self._features is None:

                self._features = open_features(self.config, self.workdir, self.snapshot.table)
            return self._features

    def references(self, label) -> dict:
        """The class's reference images: for each reference centre (WORKDIR/references.npz, largest cluster of
        the class's images first), the image nearest it among those not flagged (all, when every one is)."""
        c = self.class_id(label)
        with self._lock:
            if c not in self._reference_rows:
                self._reference_rows[c] = self._nearest_to_centres(c)
            rows = self._reference_rows[c]
        return {"class": self.snapshot.table.class_names[c], "items": [self.item(r) for r in rows]}

    def _nearest_to_centres(self, c: int) -> list[int]:
        s = self.snapshot
        rows = s.scored[s.table.labels[s.scored] == c]
        if not len(rows):
            return []
        try:
            reference_sets = ReferenceSets.load(references_path(self.workdir))
            features = self._feature_source()
        except (OSError, ValueError, RuntimeError) as error:  # no references or features: the best-scored images
            logging.warning("Reference images of class %d from scores (%s).", c, error)
            return [int(r) for r in rows[np.argsort(-s.score[rows], kind="stable")][:REFERENCE_IMAGES]]
        name = s.table.class_names[c]
        if name not in reference_sets.class_names:
            return []
        index = reference_sets.class_names.index(name)
        centres = reference_sets.references[index][:max(int(reference_sets.counts[index]), 1)]  # (k, D)
        valid = features.valid()[rows]
        good = rows[valid & ~s.flagged[rows]]
        candidates = good if len(good) else rows[valid]
        if not len(candidates):
            return []
        x = features.gather(candidates)  # (n, D)
        distances = ((x * x).sum(1)[:, None] - 2 * x @ centres.T + (centres * centres).sum(1)[None, :])  # (n, k)
        sizes = np.bincount(distances.argmin(1), minlength=len(centres))
        chosen: list[int] = []
        for centre in np.argsort(-sizes, kind="stable"):
            for i in np.argsort(distances[:, centre], kind="stable"):
                if int(candidates[i]) not in chosen:
                    chosen.append(int(candidates[i]))
                    break
            if len(chosen) == REFERENCE_IMAGES:
                break
        return chosen

    def neighbours(self, key, count: int = 12) -> dict:
        """The `count` scored images nearest `key` by cosine on ln(1 + x)-normalised features (exact, blocked)."""
        row = self.row_of(key)
        if not 1 <= count <= 100:
            raise ReviewError(f"'count' must be in [1, 100]. Received {count}")
        s = self.snapshot
        features = self._feature_source()
        query = signals.log_normalize(features.gather(np.array([row])))[0]
        valid = features.valid()
        best_rows, best_sims = np.zeros(0, np.int64), np.zeros(0, np.float32)
        pool = s.scored[valid[s.scored] & (s.scored != row)]
        for start in range(0, len(pool), _NEIGHBOUR_BLOCK):
            block = pool[start:start + _NEIGHBOUR_BLOCK]
            sims = signals.log_normalize(features.gather(block)) @ query
            best_rows = np.concatenate([best_rows, block])
            best_sims = np.concatenate([best_sims, sims])
            keep = np.argsort(-best_sims, kind="stable")[:count]
            best_rows, best_sims = best_rows[keep], best_sims[keep]
        decisions = self.store.snapshot()
        return {"key": key, "items": [{**self.item(int(r), decisions), "similarity": round(float(sim), 4)}
                                      for r, sim in zip(best_rows, best_sims, strict=True)]}

    # ------------------------------------------------------------------ images

    def thumbnail(self, key, size: int) -> bytes:
        """A JPEG of the image, its longer side at most `size` pixels (cached, at most 2000)."""
        row = self.row_of(key)
        if size not in THUMBNAIL_SIZES:
            raise ReviewError(f"'size' must be one of {THUMBNAIL_SIZES}. Received {size}")
        cache_key = (row, size)
        with self._lock:
            if cache_key in self._thumbnails:
                self._thumbnails.move_to_end(cache_key)
                return self._thumbnails[cache_key]
        import tensorflow as tf

        path = str(self.snapshot.table.paths[row])
        try:  # the pipeline's decoder: the header is held to input.max_pixels before any pixel is decoded
            with open(path, "rb") as f:
                image = images.decode_to_fit(f.read(), size, self.config.input.max_pixels)
            data = tf.io.encode_jpeg(image, quality=88).numpy()
        except images.ImageTooLargeError as error:
            raise ReviewError(f"{path}: not shown: {error}", status=422) from None
        except (OSError, tf.errors.OpError) as error:
            reason = str(getattr(error, "message", error)).strip().splitlines()
            raise ReviewError(f"{path}: cannot read the image ({reason[0] if reason else type(error).__name__})",
                              status=404) from None
        with self._lock:
            self._thumbnails[cache_key] = data
            while len(self._thumbnails) > 2000:
                self._thumbnails.popitem(last=False)
        return data
