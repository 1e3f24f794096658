"""cleannet-review's server: the access token never reaches the logs, and errors never echo megabytes."""

from __future__ import annotations

import logging

from review_helpers import Client, make_workdir

from cleannet_tf.review.server import ReviewServer
from cleannet_tf.review.session import ReviewSession


def test_the_token_is_not_logged_at_debug_verbosity(tmp_path, caplog):
    _, work, config = make_workdir(tmp_path)
    server = ReviewServer(ReviewSession(config, work, user="ana")).start()
    token = server.token
    try:
        with caplog.at_level(logging.DEBUG, logger="absl"):  # what --verbosity=1 turns on
            assert Client(server.port).request("GET", f"/?token={token}")[0] == 303
            assert Client(server.port).request("GET", f"/api/summary?token={token}")[0] == 200
            assert Client(server.port, token).request("GET", "/api/summary")[0] == 200
            assert Client(server.port).request("GET", "/api/summary?token=wrong")[0] == 403
        requests = [r.getMessage() for r in caplog.records if "GET /" in r.getMessage()]
        assert len(requests) >= 4, requests  # the requests are logged ...
        assert any("GET /?token=[redacted] HTTP/1.1" in line for line in requests), requests
        assert not any(token in record.getMessage() for record in caplog.records)  # ... the token never
        assert not any("token=wrong" in line for line in requests)
    finally:
        server.stop()


def test_a_long_key_is_not_echoed_whole(tmp_path):
    _, work, config = make_workdir(tmp_path)
    server = ReviewServer(ReviewSession(config, work, user="ana")).start()
    try:
        status, _, body = Client(server.port, server.token).request("GET", "/api/neighbours?key=" + "k" * 50_000)
        assert status == 404 and "k" * 199 + "...(50003 characters)" in body["error"] and len(body["error"]) < 1000
    finally:
        server.stop()
