"""cleannet-review and the plan's split: decisions land in verified_train.tsv or verified_val.tsv by the plan row's
split, the next run merges both, undo is per decision across clients, and the page shows what the plan still asks for.

Real HTTP on loopback against an in-process server, real files, headless Chromium for the page.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from review_helpers import Client, Page, make_workdir, wait_for

from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline import to_verify
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.review.plan import read_plan
from cleannet_tf.review.server import ReviewServer
from cleannet_tf.review.session import ReviewSession
from cleannet_tf.review.store import DecisionStore

HEADER = "class_name/key\tverification_label"


def write_plan_with_splits(work: str) -> list[dict]:
    """Adds a split column to the fixture's to_verify.tsv: ramen's rows alternate val, train; the rest train."""
    path = os.path.join(work, "verify", "to_verify.tsv")
    with open(path) as f:
        lines = f.read().splitlines()
    rows = [lines[0] + "\tsplit"]
    ramen = 0
    for line in lines[1:]:
        key = line.split("\t")[0]
        split = "train"
        if key.startswith("ramen/"):
            split = "val" if ramen % 2 == 0 else "train"
            ramen += 1
        rows.append(f"{line}\t{split}")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return read_plan(path)


@pytest.fixture
def plan_server(tmp_path):
    config_path, work, config = make_workdir(tmp_path)
    plan = write_plan_with_splits(work)
    server = ReviewServer(ReviewSession(config, work, user="tester")).start()
    yield server, work, config, plan
    server.stop()


def tsv_rows(work: str, name: str) -> list[str]:
    with open(os.path.join(work, "review", name)) as f:
        return f.read().splitlines()


def test_the_plan_reader_takes_columns_by_name_and_names_bad_rows(tmp_path):
    path = tmp_path / "to_verify.tsv"
    path.write_text("class_name/key\tsplit\nramen/r06.jpg\tval\nramen/r07.jpg\t\n")  # a cold-start plan
    assert [(row["key"], row["split"], row["guess"]) for row in read_plan(str(path))] == [
        ("ramen/r06.jpg", "val", None), ("ramen/r07.jpg", "train", None)]
    path.write_text("class_name/key\tsplit\nramen/r06.jpg\tval\nramen/r07.jpg\ttest\n")
    with pytest.raises(ValueError, match=r"to_verify\.tsv:3: split must be train or val, got 'test'"):
        read_plan(str(path))
    # The plan cleannet-verify writes today (no split column): every row is train.
    to_verify.write_verification_tsv(str(path), np.array(["a/1.jpg"]), np.array([True]), scores=np.array([0.5]),
                                  suggested_labels=np.array(["a"]), reasons=["near the threshold"])
    assert read_plan(str(path))[0]["split"] == "train"


def test_decisions_land_by_the_plan_split_and_the_next_run_merges_both_files(plan_server):
    server, work, config, plan = plan_server
    release = {name: open(os.path.join(config.data.root, "meta", name), "rb").read()
               for name in ("verified_train.tsv", "verified_val.tsv")}
    client = Client(server.port, server.token)
    ramen = [row for row in plan if row["key"].startswith("ramen/")]
    assert [row["split"] for row in ramen] == ["val", "train"] * 3
    decisions = [(ramen[0]["key"], "correct", None), (ramen[1]["key"], "wrong", None),
                 (ramen[2]["key"], "relabel", "baklava"), (ramen[3]["key"], "correct", None)]
    for key, decision, label in decisions:
        body = {"key": key, "decision": decision, "client": "page-1", **({"label": label} if label else {})}
        status, _, payload = client.request("POST", "/api/decide", body)
        assert status == 200, payload
    assert tsv_rows(work, "verified_val.tsv") == [HEADER, f"{ramen[0]['key']}\t1", f"{ramen[2]['key']}\t0"]
    assert tsv_rows(work, "verified_train.tsv") == [HEADER, f"{ramen[1]['key']}\t0", f"{ramen[3]['key']}\t1"]
    # A training image outside the plan (browse) lands in verified_train.tsv.
    assert client.request("POST", "/api/decide", {"key": "baklava/b08.jpg", "decision": "correct"})[0] == 200
    assert tsv_rows(work, "verified_train.tsv")[-1] == "baklava/b08.jpg\t1"
    _, _, queue_ = client.request("GET", "/api/queue")
    assert queue_["classes"][0]["class"] == "ramen" and queue_["classes"][0]["left"] == {"train": 1, "val": 1}

    table = load_table(config, work)  # data.merge_review: both review files
    row = {key: i for i, key in enumerate(table.keys)}
    got = {key: (data_table.SPLITS[table.split[row[key]]], int(table.verification[row[key]]))
           for key in [r["key"] for r in ramen[:4]] + ["baklava/b08.jpg"]}
    assert got == {ramen[0]["key"]: ("val", 1), ramen[1]["key"]: ("train", 0), ramen[2]["key"]: ("val", 0),
                   ramen[3]["key"]: ("train", 1), "baklava/b08.jpg": ("train", 1)}
    base_val = sum(1 for line in release["verified_val.tsv"].decode().splitlines()[1:])
    assert int((table.split == data_table.SPLIT_VAL).sum()) == base_val + 2
    for name, data in release.items():  # the dataset release is never edited
        assert open(os.path.join(config.data.root, "meta", name), "rb").read() == data

    # After a reload the decided val rows are val rows of the table: still in the plan, still reviewable.
    server.session.reload()
    status, _, payload = client.request("POST", "/api/decide", {"key": ramen[0]["key"], "decision": "wrong"})
    assert status == 200 and payload["item"]["split"] == "val" and payload["item"]["plan_split"] == "val"
    assert tsv_rows(work, "verified_val.tsv")[1:] == [f"{ramen[2]['key']}\t0", f"{ramen[0]['key']}\t0"]
    status, _, payload = client.request("POST", "/api/decide", {"key": "ramen/r02.jpg", "decision": "wrong"})
    assert status == 400 and "is a val row" in payload["error"]  # a release val row outside the plan


def test_undo_is_per_decision_when_two_clients_interleave(plan_server):
    server, work, _, plan = plan_server
    ana, bo = Client(server.port, server.token), Client(server.port, server.token)
    keys = [row["key"] for row in plan if row["key"].startswith("ramen/")]

    def decide(client, key, decision, client_id):
        status, _, payload = client.request("POST", "/api/decide", {"key": key, "decision": decision,
                                                                    "client": client_id})
        assert status == 200, payload

    decide(ana, keys[1], "correct", "ana-page")
    decide(bo, keys[3], "wrong", "bo-page")
    decide(ana, keys[5], "correct", "ana-page")
    decide(bo, keys[1], "wrong", "bo-page")  # bo changes ana's decision
    # bo's undo takes back bo's newest decision (keys[1] -> ana's "correct" again), not the log's last event.
    status, _, payload = bo.request("POST", "/api/undo", {"client": "bo-page"})
    assert status == 200 and payload["item"]["key"] == keys[1]
    assert payload["item"]["decision"]["decision"] == "correct"
    decide(bo, keys[0], "correct", "bo-page")  # a val row of the plan
    # ana takes back her decision on keys[5], although bo decided after it.
    status, _, payload = ana.request("POST", "/api/undo", {"key": keys[5], "client": "ana-page"})
    assert status == 200 and payload["item"]["key"] == keys[5] and payload["item"]["decision"] is None
    status, _, payload = bo.request("POST", "/api/undo", {"client": "bo-page"})  # bo's newest: keys[0]
    assert status == 200 and payload["item"]["key"] == keys[0]
    status, _, payload = bo.request("POST", "/api/undo", {"client": "bo-page"})  # then keys[3]
    assert status == 200 and payload["item"]["key"] == keys[3]
    status, _, payload = bo.request("POST", "/api/undo", {"client": "bo-page"})
    assert status == 409 and payload["error"] == "nothing to undo"
    status, _, payload = ana.request("POST", "/api/undo", {"key": keys[3]})
    assert status == 409  # no decision in force on keys[3]

    expected = {keys[1]: ("correct", "ana-page")}
    live = server.session.store.snapshot()
    assert {key: (value["decision"], value["client"]) for key, value in live.items()} == expected
    with open(os.path.join(work, "review", "decisions.jsonl")) as f:
        events = [json.loads(line) for line in f]
    assert [(e["event"], e["key"], e["client"], e["user"]) for e in events] == [
        ("decide", keys[1], "ana-page", "tester"), ("decide", keys[3], "bo-page", "tester"),
        ("decide", keys[5], "ana-page", "tester"), ("decide", keys[1], "bo-page", "tester"),
        ("undo", keys[1], "bo-page", "tester"), ("decide", keys[0], "bo-page", "tester"),
        ("undo", keys[5], "ana-page", "tester"), ("undo", keys[0], "bo-page", "tester"),
        ("undo", keys[3], "bo-page", "tester")]
    replayed = DecisionStore(os.path.join(work, "review"))  # the log replays to the same state
    assert replayed.snapshot() == live
    assert tsv_rows(work, "verified_train.tsv") == [HEADER, f"{keys[1]}\t1"]
    assert tsv_rows(work, "verified_val.tsv") == [HEADER]


def test_the_page_shows_per_class_how_many_decisions_the_plan_still_asks_for(plan_server, browser):
    server, work, _, plan = plan_server
    page = Page(browser).open(server.url)

    def left(name: str) -> tuple[int, int]:  # read in one script: the list is redrawn after each decision
        train, val = browser.execute_script(
            "const e = document.querySelector(`#class-list li[data-class='${arguments[0]}'] .left`);"
            "return [e.dataset.train, e.dataset.val];", name)
        return int(train), int(val)

    expected = {}
    for row in plan:
        name = row["key"].split("/")[0]
        train, val = expected.get(name, (0, 0))
        expected[name] = (train + (row["split"] == "train"), val + (row["split"] == "val"))
    assert {name: left(name) for name in expected} == expected and expected["ramen"] == (3, 3)
    text = browser.execute_script("return document.querySelector(`#class-list li[data-class='ramen'] .left`)"
                                  ".textContent")
    assert text == "6 more: 3 train, 3 val"
    assert page.cursor_key() == plan[0]["key"] and plan[0]["split"] == "val"
    page.press("y")  # a val row of the plan
    wait_for(lambda: left("ramen") == (3, 2), "the val count to go down")
    page.press("n")  # a train row
    wait_for(lambda: left("ramen") == (2, 2), "the train count to go down")
    assert tsv_rows(work, "verified_val.tsv") == [HEADER, f"{plan[0]['key']}\t1"]
    assert tsv_rows(work, "verified_train.tsv") == [HEADER, f"{plan[1]['key']}\t0"]
    page.press("u")  # undo: this page's newest decision
    wait_for(lambda: left("ramen") == (3, 2), "the undo")
    events = [json.loads(line) for line in open(os.path.join(work, "review", "decisions.jsonl"))]
    clients = {event["client"] for event in events}
    assert len(clients) == 1 and None not in clients  # the page's own id, on every event
    page.open(server.url.split("?")[0])  # a reload keeps the counts (from the server)
    assert left("ramen") == (3, 2)
