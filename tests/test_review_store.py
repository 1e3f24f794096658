"""cleannet-review's decisions on disk (cleannet_tf/review/store.py) and data.extra_verified reading them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from review_helpers import review_rows

from cleannet_tf import atomic_io
from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline import workdir as workdir_lib
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.review.store import DecisionStore


def test_store_replays_its_log_and_drops_a_torn_last_line(tmp_path):
    store = DecisionStore(str(tmp_path / "review"))
    store.decide("a/1.jpg", "correct", label="a", user="ana")
    store.decide("a/2.jpg", "relabel", label="a", chosen="b", user="ana")
    store.decide("b/3.jpg", "wrong", label="b", user="bo")
    assert store.undo(user="bo") == ("b/3.jpg", None)
    store.decide("a/1.jpg", "wrong", label="a", user="bo")  # changed mind: the newest decision wins
    with open(store.log_path, "a") as f:
        f.write('{"event": "decide", "key": "b/9.j')  # a kill in the middle of a line
    again = DecisionStore(str(tmp_path / "review"))
    assert list(again.decisions) == ["a/2.jpg", "a/1.jpg"]
    assert again.decisions["a/2.jpg"]["chosen"] == "b" and again.decisions["a/1.jpg"]["user"] == "bo"
    assert review_rows(str(tmp_path)) == ["class_name/key\tverification_label", "a/2.jpg\t0", "a/1.jpg\t0"]
    assert open(again.relabelled_path).read().splitlines()[1:] == ["a/2.jpg\ta\tb"]
    assert open(again.log_path, "rb").read().endswith(b"}\n")  # the torn line is gone
    key, previous = again.undo(user="bo")
    assert key == "a/1.jpg" and (previous["decision"], previous["verified"], previous["user"]) == ("correct", 1, "ana")
    assert DecisionStore(str(tmp_path / "review")).decisions["a/1.jpg"]["decision"] == "correct"


def test_extra_verified_changes_the_tables_labels_not_the_release(workdir, tmp_path):
    _, work, config = workdir
    release = os.path.join(config.data.root, "meta", "verified_train.tsv")
    release_bytes = open(release, "rb").read()
    base = load_table(config, work)
    key_unverified, key_verified = "ramen/r06.jpg", "apple_pie/a00.jpg"  # -1 and 1 in the release
    row = {key: i for i, key in enumerate(base.keys)}
    assert base.verification[row[key_unverified]] == -1 and base.verification[row[key_verified]] == 1
    store = DecisionStore(os.path.join(work, "review"))
    store.decide(key_unverified, "correct", label="ramen", user="t")
    store.decide(key_verified, "relabel", label="apple_pie", chosen="ramen", user="t")
    table = load_table(config, work)  # data.merge_review: the review file
    assert table.verification[row[key_unverified]] == 1 and table.verification[row[key_verified]] == 0
    changed = np.nonzero(table.verification != base.verification)[0]
    assert sorted(changed) == sorted([row[key_unverified], row[key_verified]])
    assert open(release, "rb").read() == release_bytes

    config.unlock()
    config.data.merge_review = False
    assert np.array_equal(load_table(config, work).verification, base.verification)
    extra = tmp_path / "extra.tsv"
    extra.write_text("class_name/key\tverification_label\nbaklava/b07.jpg\t0\nnot/in_the_data.jpg\t1\n")
    config.data.extra_verified = (str(extra), workdir_lib.review_files(work)[0])
    table = load_table(config, work)
    assert table.verification[row["baklava/b07.jpg"]] == 0 and table.verification[row[key_unverified]] == 1
    assert sum(table.skipped.values()) == 1  # the unknown key is counted, not fatal
    extra.write_text("class_name/key\tverification_label\nramen/r02.jpg\t1\n")  # a verified_val row
    config.data.extra_verified = (str(extra),)
    with pytest.raises(data_table.DatasetError, match=r"extra\.tsv, line 2: 'ramen/r02\.jpg' is a val row"):
        load_table(config, work)



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


def test_the_stores_temporary_files_are_ones_the_litter_cleanup_knows(tmp_path, monkeypatch):
    # The store's files go through atomic_io's temporary names, so a killed server's half-written TSV is cleaned
    # when the workdir lock is next taken (its own temp names escaped atomic_io.clean_litter).
    temporaries = []
    real_replace = os.replace

    def replace(src, dst):
        temporaries.append(os.path.basename(str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    store = DecisionStore(str(tmp_path / "review"))
    store.decide("a/1.jpg", "correct", label="a", user="ana")
    monkeypatch.undo()
    assert temporaries and all(atomic_io.temp_owner(name) is not None for name in temporaries), temporaries
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    left = tmp_path / "review" / temporaries[0].replace(str(os.getpid()), dead)
    left.write_text("half a file")
    assert atomic_io.clean_litter(str(tmp_path)) == [str(left)] and not left.exists()
