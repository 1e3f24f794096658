"""cleannet-review's HTTP API (cleannet_tf/review/server.py) on loopback."""

from __future__ import annotations

import os
import re
from urllib.parse import quote

import numpy as np
from review_helpers import Client, proposals, review_files

from cleannet_tf.pipeline import scores_tsv


def test_server_binds_loopback_and_refuses_requests_without_the_token(server):
    server, work = server
    assert server.httpd.socket.getsockname()[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    before = review_files(work)
    key = proposals(work)[0]["key"]
    for token in (None, "wrong-token"):
        client = Client(server.port, token)
        for method, path, body in (("GET", "/", None), ("GET", "/app.js", None), ("GET", "/api/summary", None),
                                   ("GET", f"/api/image?key={quote(key)}&size=160", None),
                                   ("POST", "/api/decide", {"key": key, "decision": "correct"}),
                                   ("POST", "/api/undo", {}), ("POST", "/api/retrain", {})):
            status, _, payload = client.request(method, path, body)
            assert status == 403, (token, method, path)
            assert "token" in payload["error"]
    status, _, _ = Client(server.port).request("GET", "/?token=wrong")
    assert status == 403
    assert review_files(work) == before and not os.path.exists(os.path.join(work, "review", "retrain.log"))

    # The token in the URL once: a cookie, and the address bar loses the token.
    status, headers, _ = Client(server.port).request("GET", f"/?token={server.token}")
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    status, headers, page = Client(server.port).request("GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b"cleannet-review" in page and headers["Content-Type"].startswith("text/html")
    assert b"http" not in page.replace(b"http-equiv", b"")  # no CDN: every asset comes from this server
    status, _, image = Client(server.port).request("GET", f"/api/image?key={quote(key)}&size=96",
                                                   headers={"Cookie": cookie})
    assert status == 200 and image[:2] == b"\xff\xd8"


def test_bad_input_gets_a_clear_error_and_changes_nothing(server):
    server, work = server
    client = Client(server.port, server.token)
    key = proposals(work)[0]["key"]
    status, _, _ = client.request("POST", "/api/decide", {"key": key, "decision": "correct"})
    assert status == 200
    before = review_files(work)
    cases = [
        ({"key": "ramen/nope.jpg", "decision": "correct"}, 404, r"unknown key 'ramen/nope\.jpg'"),
        ({"key": key, "decision": "relabel", "label": 3}, 400, r"label 3 out of range: the dataset has 3 classes"),
        ({"key": key, "decision": "relabel", "label": -1}, 400, r"label -1 out of range"),
        ({"key": key, "decision": "relabel", "label": "pizza"}, 400, r"unknown class 'pizza'"),
        ({"key": key, "decision": "relabel", "label": "ramen"}, 400, r"'ramen' is the given label"),
        ({"key": key, "decision": "relabel"}, 400, r"needs 'label'"),
        ({"key": key, "decision": "correct", "label": "baklava"}, 400, r"'label' goes with decision 'relabel'"),
        ({"key": key, "decision": "maybe"}, 400, r"'decision' must be correct, wrong or relabel"),
        ({"key": key}, 400, r"missing field 'decision'"),
        ({"key": key, "decision": "correct", "extra": 1}, 400, r"unknown field\(s\) extra"),
        ({"key": 7, "decision": "correct"}, 400, r"'key' must be a non-empty string"),
        ({"key": "ramen/r02.jpg", "decision": "wrong"}, 400, r"is a val row"),
    ]
    for body, expected_status, pattern in cases:
        status, _, payload = client.request("POST", "/api/decide", body)
        assert status == expected_status, (body, payload)
        assert re.search(pattern, payload["error"]), (body, payload["error"])
    for raw, pattern in ((b'{"key": "ramen/r06.jpg", "decision": ', r"not valid JSON"),
                         (b'["ramen/r06.jpg", "correct"]', r"must be a JSON object. Received list"),
                         (b"\xff\xfe", r"not valid JSON")):
        status, _, payload = client.request("POST", "/api/decide", raw=raw)
        assert status == 400 and re.search(pattern, payload["error"]), payload
    for path, expected_status in (("/api/browse?flagged=2", 400), ("/api/browse?label=99", 400),
                                  ("/api/image?key=ramen/r06.jpg&size=5000", 400), ("/api/neighbours?key=x", 404),
                                  ("/api/neighbours?key=ramen/r06.jpg&count=0", 400), ("/api/nothing", 404),
                                  ("/api/decide", 405), ("/api/queue?x=1", 400)):
        status, _, payload = client.request("GET", path)
        assert status == expected_status and payload["error"], (path, payload)
    assert review_files(work) == before  # nothing written by any bad request
    status, _, payload = client.request("POST", "/api/undo", {})
    assert status == 200 and payload["item"]["key"] == key and payload["item"]["decision"] is None
    status, _, payload = client.request("POST", "/api/undo", {})
    assert status == 409 and payload["error"] == "nothing to undo"


def test_queue_browse_references_and_neighbours(server):
    server, work = server
    client = Client(server.port, server.token)
    _, _, queue_ = client.request("GET", "/api/queue")
    assert [group["class"] for group in queue_["classes"]][0] == "ramen"  # no verified label: first
    file_order = [entry["key"] for entry in proposals(work)]
    assert [item["key"] for group in queue_["classes"] for item in group["items"]] == file_order
    first = queue_["classes"][0]["items"][0]
    assert set(first) >= {"key", "label", "score", "suggested", "flagged", "why"} and first["label"] == "ramen"
    client.request("POST", "/api/decide", {"key": first["key"], "decision": "relabel", "label": "baklava"})
    _, _, queue_ = client.request("GET", "/api/queue")
    ramen = queue_["classes"][0]
    assert ramen["decided"] == 1 and ramen["relabel"] == 1 and first["key"] not in {i["key"] for i in ramen["items"]}

    _, _, flagged = client.request("GET", "/api/browse?flagged=1&limit=500")
    scores = scores_tsv.read_scores_tsv(os.path.join(work, "verify", "scores.tsv"))
    assert flagged["total"] == int(scores.noisy.sum()) and all(item["flagged"] for item in flagged["items"])
    assert [item["score"] for item in flagged["items"]] == sorted(item["score"] for item in flagged["items"])
    _, _, picked = client.request("GET", "/api/browse?label=baklava&suggested=apple_pie&decided=0")
    expected = sum(1 for k, s in zip(scores.labels, scores.suggested_labels, strict=True)
                   if k == "baklava" and s == "apple_pie")
    assert picked["total"] == expected and all(i["label"] == "baklava" and i["suggested"] == "apple_pie"
                                               for i in picked["items"])
    _, _, decided = client.request("GET", "/api/browse?decided=1")
    assert [item["key"] for item in decided["items"]] == [first["key"]]

    _, _, references = client.request("GET", "/api/references?label=baklava")
    assert 1 <= len(references["items"]) <= 2 and all(i["label"] == "baklava" and not i["flagged"]
                                                       for i in references["items"])
    _, _, neighbours = client.request("GET", "/api/neighbours?key=apple_pie/a07.jpg&count=5")
    features = np.load(os.path.join(os.path.dirname(work), "features.npz"))
    keys, x = list(features["keys"]), np.log1p(features["features"])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x[keys.index("apple_pie/a07.jpg")]
    exact = [keys[i] for i in np.argsort(-similarity) if keys[i] != "apple_pie/a07.jpg"][:5]
    assert [item["key"] for item in neighbours["items"]] == exact
