"""A person's review decisions on disk, in WORKDIR/review/ (every change saved at once, a kill loses nothing).

    decisions.jsonl       append-only event log, one JSON object a line, fsync'ed before anything else:
                          {"event": "decide", "time", "user", "key", "decision": correct|wrong|relabel,
                           "verified": 1|0, "label": given class, "chosen": the right class (relabel) or null}
                          {"event": "undo", "time", "user", "key", "restored": the decision it brings back or null}
    verified_train.tsv    the current decisions in the release's verified_train.tsv format (header, then
                          `key<TAB>1|0`), what data.extra_verified reads; rewritten from the log after each event
                          (temporary name, fsync, rename)
    relabelled.tsv        the images given another class: `key<TAB>label<TAB>corrected_label`

The log is the record: on opening, the store replays it and rewrites the two TSVs, so a kill between the log
and a TSV loses nothing. A torn last line (a kill in the middle of writing it) is dropped with a warning.

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
LOG_NAME = "decisions.jsonl"
TSV_NAME = REVIEW_FILE_NAMES[0]  # verified_train.tsv: what data.merge_review applies
RELABELLED_NAME = "relabelled.tsv"


def now() -> str:
    """The time saved with an event: UTC, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class DecisionStore:
    """The decisions of WORKDIR/review/ (see the module docstring); thread-safe.

    decisions: key -> {"decision", "verified", "label", "chosen", "user", "time"}, in the order they were made.
    """

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.log_path = os.path.join(self.directory, LOG_NAME)
        self.tsv_path = os.path.join(self.directory, TSV_NAME)
        self.relabelled_path = os.path.join(self.directory, RELABELLED_NAME)
        self._lock = threading.Lock()
        self.decisions: dict[str, dict] = {}
        self._undo_stack: list[tuple[str, dict | None]] = []  # (key, the decision before) of each decide
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
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.log_path}:{number}: not a review event ({error}): {line[:200]!r}") from None

    def _apply(self, event: dict) -> None:
        key = event["key"]
        if event["event"] == "decide":
            self._undo_stack.append((key, self.decisions.get(key)))
            self.decisions.pop(key, None)
            self.decisions[key] = {name: event[name] for name in ("decision", "verified", "label", "chosen", "user",
                                                                   "time")}
        elif event["event"] == "undo":
            if not self._undo_stack or self._undo_stack[-1][0] != key:
                raise ValueError(f"undo of {key!r} does not match the last decision")
            self._undo_stack.pop()
            self.decisions.pop(key, None)
            if event["restored"] is not None:
                self.decisions[key] = event["restored"]
        else:
            raise ValueError(f"unknown event {event['event']!r}")

    def _append(self, event: dict) -> None:
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _write_tsvs(self) -> None:
        header = "\t".join(to_verify.HEADER[:2])
        atomic_io.write_text(self.tsv_path, "".join([header + "\n"] + [f"{key}\t{value['verified']}\n"
                                                                    for key, value in self.decisions.items()]),
                             sync_folder=True)
        atomic_io.write_text(self.relabelled_path, "".join(
            ["class_name/key\tlabel\tcorrected_label\n"]
            + [f"{key}\t{value['label']}\t{value['chosen']}\n" for key, value in self.decisions.items()
               if value["decision"] == "relabel"]), sync_folder=True)

    def decide(self, key: str, decision: str, *, label: str, chosen: str | None = None, user: str) -> dict:
        """Records one decision (the caller has checked key and classes); returns the stored decision.

        decision: "correct" (verified 1), "wrong" (0), "relabel" (0; `chosen` is the right class).
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}. Received {decision!r}")
        if (decision == "relabel") != (chosen is not None):
            raise ValueError("a relabel decision needs the chosen class, the others none")
        event = {"event": "decide", "time": now(), "user": user, "key": key, "decision": decision,
                 "verified": int(decision == "correct"), "label": label, "chosen": chosen}
        with self._lock:
            self._append(event)
            self._apply(event)
            self._write_tsvs()
            return dict(self.decisions[key])

    def undo(self, *, user: str) -> tuple[str, dict | None] | None:
        """Takes back the last decision still in force: (key, the decision now in force or None), or None."""
        with self._lock:
            if not self._undo_stack:
                return None
            key, previous = self._undo_stack[-1]
            event = {"event": "undo", "time": now(), "user": user, "key": key, "restored": previous}
            self._append(event)
            self._apply(event)
            self._write_tsvs()
            return key, previous

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            return {key: dict(value) for key, value in self.decisions.items()}
