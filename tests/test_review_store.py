"""review.store: the decision log replays per key, whatever the order two writers' events came in."""

from __future__ import annotations

import json

import pytest

from cleannet_tf.review.store import DecisionStore


def test_a_log_of_interleaved_writers_replays_with_per_key_undo(tmp_path):
    # What two servers once wrote to one log (format before clients and splits): server A decided k1, server B
    # decided k2, then A's undo took back k1 (A's last decision, not the log's). The store used to refuse this log.
    directory = tmp_path / "review"
    directory.mkdir()
    events = [
        {"event": "decide", "time": "t1", "user": "ana", "key": "a/k1.jpg", "decision": "correct", "verified": 1,
         "label": "a", "chosen": None},
        {"event": "decide", "time": "t2", "user": "bo", "key": "b/k2.jpg", "decision": "relabel", "verified": 0,
         "label": "b", "chosen": "a"},
        {"event": "undo", "time": "t3", "user": "ana", "key": "a/k1.jpg", "restored": None},
    ]
    (directory / "decisions.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    store = DecisionStore(str(directory))
    assert list(store.decisions) == ["b/k2.jpg"] and store.decisions["b/k2.jpg"]["split"] == "train"
    assert open(store.tsv_path).read().splitlines() == ["class_name/key\tverification_label", "b/k2.jpg\t0"]
    assert open(store.val_tsv_path).read().splitlines() == ["class_name/key\tverification_label"]
    # An undo of a key with no decision in force is a broken log: refused, naming the file and line.
    with open(store.log_path, "a") as f:
        f.write(json.dumps({"event": "undo", "time": "t4", "user": "ana", "key": "a/k1.jpg", "restored": None}) + "\n")
    with pytest.raises(ValueError, match=r"decisions\.jsonl:4: not a review event"):
        DecisionStore(str(directory))
