"""A person's review decisions on disk, in WORKDIR/review/ (every change saved at once, a kill loses nothing).

    decisions.jsonl       append-only event log, one JSON object a line, fsync'ed before anything else:
                          {"event": "decide", "time", "user", "client", "key", "decision": correct|wrong|relabel,
                           "verified": 1|0, "label": given class, "chosen": the right class (relabel) or null,
                           "split": train|val (the plan row's; older logs: train)}
                          {"event": "undo", "time", "user", "client", "key", "restored": the key's decision it
                           brings back or null}
    verified_train.tsv    the current decisions of split train in the release's verified_train.tsv format (header,
                          then `key<TAB>1|0`), what data.extra_verified reads; rewritten from the log after each event
    verified_val.tsv      the same for the decisions of split val (the release's verified_val.tsv format): the next
                          run makes those rows verified validation rows
    relabelled.tsv        the images given another class: `key<TAB>label<TAB>corrected_label`

Undo is per key: it takes back the decision in force for one key (bringing back that key's decision before it),
whoever made other decisions since, so a log where several pages (clients) interleave replays to the same state.
`client` is the id the page made for itself (null from API callers that send none); `user` the server's user.

The log is the record: on opening, the store replays it and rewrites the TSVs (atomic_io.write_text: temporary
name, rename), so a kill between the log and a TSV loses nothing. A torn last line (a kill in the middle of writing
it) is dropped with a warning. One process writes a workdir's review/ at a time: cleannet-review holds the
workdir lock (pipeline/lock.py) while it serves.

Imports `atomic_io`, `pipeline` (to_verify, workdir).
"""

from __future__ import annotations

import datetime
import json
import os
import threading

from absl import logging

from cleannet_tf import atomic_io
from cleannet_tf.pipeline import to_verify
from cleannet_tf.pipeline.workdir import REVIEW_FILE_NAMES

DECISIONS = ("correct", "wrong", "relabel")
SPLITS = ("train", "val")
LOG_NAME = "decisions.jsonl"
TSV_NAME, VAL_TSV_NAME = REVIEW_FILE_NAMES  # verified_train.tsv, verified_val.tsv: what data.merge_review applies
RELABELLED_NAME = "relabelled.tsv"
_FIELDS = ("decision", "verified", "label", "chosen", "user", "client", "split", "time")


def now() -> str:
    """The time saved with an event: UTC, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class DecisionStore:
    """The decisions of WORKDIR/review/ (see the module docstring); thread-safe.

    decisions: key -> {"decision", "verified", "label", "chosen", "user", "client", "split", "time", "seq"}, in
    the order they were made (seq: the decide event's number in the log).
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.log_path = os.path.join(self.directory, LOG_NAME)
        self.tsv_path = os.path.join(self.directory, TSV_NAME)
        self.val_tsv_path = os.path.join(self.directory, VAL_TSV_NAME)
        self.relabelled_path = os.path.join(self.directory, RELABELLED_NAME)
        self._lock = threading.Lock()
        self.decisions: dict[str, dict] = {}
        self._before: dict[str, list[dict | None]] = {}  # key -> the decisions each of its decides replaced
        self._events = 0
        self._replay()
        self._write_tsvs()

    def _replay(self) -> None:
        if not os.path.exists(self.log_path):
            return
        with open(self.log_path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        if lines and lines[-1]:  # no final newline: the last write was cut short
            logging.warning("%s: dropping a torn last line (%d bytes).", self.log_path, len(lines[-1]))
            with open(self.log_path, "r+b") as f:
                f.truncate(len(data) - len(lines[-1]))
        for number, line in enumerate(lines[:-1], start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                self._apply(event)
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise ValueError(f"{self.log_path}:{number}: not a review event ({error}): {line[:200]!r}") from None

    def _apply(self, event: dict) -> None:
        key = event["key"]
        self._events += 1
        if event["event"] == "decide":
            decision = {name: event.get(name) for name in _FIELDS}
            decision["split"] = decision["split"] or "train"  # logs from before the plan's split column
            if decision["split"] not in SPLITS or decision["decision"] not in DECISIONS:
                raise ValueError(f"bad split or decision in {event!r}")
            decision["seq"] = self._events
            self._before.setdefault(key, []).append(self.decisions.pop(key, None))
            self.decisions[key] = decision
        elif event["event"] == "undo":
            if key not in self.decisions or not self._before.get(key):
                raise ValueError(f"undo of {key!r}, which has no decision in force")
            self._before[key].pop()
            del self.decisions[key]
            restored = event["restored"]
            if restored is not None:
                self.decisions[key] = {"split": "train", "client": None, "seq": 0, **restored}
        else:
            raise ValueError(f"unknown event {event['event']!r}")

    def _append(self, event: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_tsvs(self) -> None:
        header = "\t".join(to_verify.HEADER[:2]) + "\n"
        for split, path in (("train", self.tsv_path), ("val", self.val_tsv_path)):
            atomic_io.write_text(path, "".join([header] + [f"{key}\t{value['verified']}\n"
                                                           for key, value in self.decisions.items()
                                                           if value["split"] == split]), sync_folder=True)
        atomic_io.write_text(self.relabelled_path, "".join(
            ["class_name/key\tlabel\tcorrected_label\n"]
            + [f"{key}\t{value['label']}\t{value['chosen']}\n" for key, value in self.decisions.items()
               if value["decision"] == "relabel"]), sync_folder=True)

    def decide(self, key: str, decision: str, *, label: str, chosen: str | None = None, user: str,
               client: str | None = None, split: str = "train") -> dict:
        """Records one decision (the caller has checked key and classes); returns the stored decision.

        decision: "correct" (verified 1), "wrong" (0), "relabel" (0; `chosen` is the right class).
        split: the file it lands in, verified_train.tsv or verified_val.tsv.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}. Received {decision!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}. Received {split!r}")
        if (decision == "relabel") != (chosen is not None):
            raise ValueError("a relabel decision needs the chosen class, the others none")
        event = {"event": "decide", "time": now(), "user": user, "client": client, "key": key,
                 "decision": decision, "verified": int(decision == "correct"), "label": label, "chosen": chosen,
                 "split": split}
        with self._lock:
            self._append(event)
            self._apply(event)
            self._write_tsvs()
            return dict(self.decisions[key])

    def undo(self, *, user: str, client: str | None = None, key: str | None = None) -> tuple[str, dict | None] | None:
        """Takes back the decision in force for `key` (None: the newest decision in force `client` made).

        Returns (key, the key's decision now in force or None), or None when there is nothing to undo.
        """
        with self._lock:
            if key is None:
                mine = [(value["seq"], k) for k, value in self.decisions.items() if value["client"] == client]
                if not mine:
                    return None
                key = max(mine)[1]
            if key not in self.decisions or not self._before.get(key):
                return None
            previous = self._before[key][-1]
            event = {"event": "undo", "time": now(), "user": user, "client": client, "key": key,
                     "restored": previous}
            self._append(event)
            self._apply(event)
            self._write_tsvs()
            return key, (dict(previous) if previous is not None else None)

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {key: dict(value) for key, value in self.decisions.items()}
