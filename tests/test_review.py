"""cleannet-review: decisions on disk, data.extra_verified, the HTTP API, and the page in headless Chromium.

The fixture is a small workdir written in the test with the project's writers: a Food-101N tree of real JPEGs
and PNGs, precomputed features (data.features), references.npz, and WORKDIR/verify/{scores.tsv, to_verify.tsv,
metrics.json}.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import runpy
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.pipeline import scores_tsv, to_verify
from cleannet_tf.pipeline import workdir as workdir_lib
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import references_path
from cleannet_tf.review import retrain as retrain_lib
from cleannet_tf.review.server import ReviewServer
from cleannet_tf.review.session import ReviewSession
from cleannet_tf.review.store import DecisionStore
from cleannet_tf.training import checkpointing

CLASSES = ("apple_pie", "baklava", "ramen")
PER_CLASS = 12
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_workdir(tmp_path, *, train_steps: int = 40):
    """A dataset, features, references and cleannet-verify's outputs. Returns (config .py path, workdir, config).

    ramen has no verified training label, so to_verify.tsv lists it first.
    """
    rng = np.random.default_rng(0)
    root, workdir = tmp_path / "food", tmp_path / "work"
    keys, labels = [], []
    colours = {"apple_pie": (200, 60, 40), "baklava": (210, 170, 60), "ramen": (60, 90, 200)}
    for c, name in enumerate(CLASSES):
        for i in range(PER_CLASS):
            key = f"{name}/{name[0]}{i:02d}.jpg"
            path = root / "images" / key
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(np.array(colours[name]) + rng.normal(0, 25, (24, 32, 3)), 0, 255).astype(np.uint8)
            # PNG bytes under a .jpg name every third image: the reader and PIL go by content
            Image.fromarray(pixels).save(path, format="PNG" if i % 3 == 2 else "JPEG")
            keys.append(key)
            labels.append(c)
    labels = np.array(labels)
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "classes.txt").write_text("class_name\n" + "\n".join(CLASSES) + "\n")
    (meta / "imagelist.tsv").write_text("class_name/key\n" + "\n".join(keys) + "\n")
    # image i of a class: 0-1 verified train (apple_pie, baklava), 2-5 verified val, the others unverified
    train_rows = [c * PER_CLASS + i for c in (0, 1) for i in (0, 1)]
    val_rows = [c * PER_CLASS + i for c in range(3) for i in (2, 3, 4, 5)]
    wrong = {c * PER_CLASS + 5 for c in range(3)} | {c * PER_CLASS + 11 for c in range(3)}
    (meta / "verified_train.tsv").write_text("class_name/key\tverification_label\n" + "".join(
        f"{keys[r]}\t{int(r not in wrong)}\n" for r in train_rows))
    (meta / "verified_val.tsv").write_text("class_name/key\tverification_label\n" + "".join(
        f"{keys[r]}\t{int(r not in wrong)}\n" for r in val_rows))
    true = labels.copy()
    for r in wrong:
        true[r] = (labels[r] + 1) % 3
    centres = rng.gamma(2.0, 1.0, (3, 16)).astype(np.float32) * 2
    features = np.maximum(centres[true] + rng.normal(0, 0.4, (len(keys), 16)), 0).astype(np.float32)
    np.savez(tmp_path / "features.npz", keys=np.array(keys), features=features)

    config_path = tmp_path / "review_config.py"
    config_path.write_text(textwrap.dedent(f"""
        from cleannet_tf.config import default_config

        def get_config():
            c = default_config()
            c.data.root = {str(root)!r}
            c.data.features = {str(tmp_path / "features.npz")!r}
            c.model.backbone = "small_cnn"
            c.model.weights = "random"
            c.refs.num_references = 2
            c.refs.n_init = 1
            c.cleannet.query_hidden_dim = 16
            c.cleannet.reference_hidden_dim = 16
            c.cleannet.attention_dim = 8
            c.cleannet.embed_dim = 8
            c.train.steps = {train_steps}
            c.train.batch_size = 8
            c.train.learning_rate = 0.05
            c.train.lr_decay_steps = 1000
            c.train.eval_every = 20
            c.train.log_every = 10
            c.train.checkpoint_every = 20
            c.verify.budget_per_class = 6
            c.verify.report_classes = 1
            return c
        """))
    config = config_lib.validate(runpy.run_path(str(config_path))["get_config"]())

    workdir.mkdir()
    table = load_table(config, str(workdir))
    class_means = np.stack([features[table.labels == c].mean(0) for c in range(3)])
    ReferenceSets(references=np.stack([class_means, class_means * 1.1], axis=1).astype(np.float32),
                  counts=np.full(3, 2, np.int32), class_names=CLASSES,
                  num_images=np.full(3, PER_CLASS, np.int64)).save(references_path(str(workdir)))
    normalized = features / np.linalg.norm(features, axis=1, keepdims=True)
    means = class_means / np.linalg.norm(class_means, axis=1, keepdims=True)
    all_scores = normalized @ means.T  # (N, C)
    scores = all_scores[np.arange(len(keys)), table.labels].astype(np.float32)
    threshold = float(np.quantile(scores, 0.25))
    suggested = all_scores.argmax(1)
    names = np.array(CLASSES)
    verify = workdir / "verify"
    verify.mkdir()
    scores_tsv.write_scores_tsv(str(verify / "scores.tsv"), scores_tsv.ScoresTable(
        keys=table.keys, labels=names[table.labels], scores=scores, noisy=scores < threshold,
        weight_soft=np.clip(scores, 0, 1), weight_hard=scores >= threshold, suggested_labels=names[suggested],
        suggested_scores=all_scores.max(1).astype(np.float32)))
    train = table.split == data_table.SPLIT_TRAIN
    rows = to_verify.propose_verification(
        table.labels, scores, np.where(train, table.verification, -1), threshold=threshold, budget_per_class=6,
        num_classes=3, candidates=train & (table.verification < 0))
    has_verification = np.bincount(table.labels[train & (table.verification >= 0)], minlength=3) > 0
    to_verify.write_verification_tsv(
        str(verify / "to_verify.tsv"), table.keys[rows], scores[rows] >= threshold, scores=scores[rows],
        suggested_labels=names[suggested[rows]],
        reasons=["near the threshold" if has_verification[c] else "class has no verified label"
                 for c in table.labels[rows]])
    checkpointing.write_json(str(verify / "metrics.json"), {
        "threshold": threshold, "detection_error": 0.25, "detection_error_heldout": None,
        "detection_error_all": 0.25, "roc_auc": 0.75, "n_val": 12, "mode": "paper"})
    return str(config_path), str(workdir), config


def proposals(workdir: str) -> list[dict]:
    return to_verify.read_verification_tsv(os.path.join(workdir, "verify", "to_verify.tsv"))


def review_rows(workdir: str) -> list[str]:
    with open(workdir_lib.review_files(workdir)[0]) as f:
        return f.read().splitlines()


def log_events(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "review", "decisions.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def workdir(tmp_path):
    return make_workdir(tmp_path)


# ---------------------------------------------------------------------- store and data.extra_verified


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


# ---------------------------------------------------------------------- HTTP


class Client:
    """Plain HTTP on a fresh connection per request: (status, headers, parsed JSON or bytes)."""

    def __init__(self, port: int, token: str | None = None):
        self.port, self.token = port, token

    def request(self, method, path, body=None, *, raw: bytes | None = None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = dict(headers or {})
        if self.token:
            headers["X-Review-Token"] = self.token
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        connection.close()
        if response.getheader("Content-Type", "").startswith("application/json"):
            payload = json.loads(payload)
        return response.status, dict(response.getheaders()), payload


@pytest.fixture
def server(workdir):
    _, work, config = workdir
    session = ReviewSession(config, work, user="tester")
    retrainer = retrain_lib.Retrainer(config, work, read_metrics=lambda w: json.load(
        open(os.path.join(w, "verify", "metrics.json"))), on_finished=lambda ok: ok and session.reload())
    server = ReviewServer(session, retrainer).start()
    yield server, work
    server.stop()


def review_files(work: str) -> dict:
    directory = os.path.join(work, "review")
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


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


def test_browse_orders_saturated_scores_by_their_rank_score(workdir):
    _, work, config = workdir
    path = os.path.join(work, "verify", "scores.tsv")
    scores = scores_tsv.read_scores_tsv(path)
    lowest = np.argsort(scores.scores, kind="stable")[:6]
    rank = scores.scores.astype(np.float64)
    rank[lowest] = -40.0 + np.array([5, 0, 3, 1, 4, 2])  # six images the score ties at -1, their logits apart
    scores.scores[lowest] = -1.0
    scores.rank_score = rank
    scores_tsv.write_scores_tsv(path, scores)
    listed = ReviewSession(config, work, user="tester").browse(limit=6)["items"]
    assert [item["key"] for item in listed] == list(scores.keys[lowest[[1, 3, 5, 2, 4, 0]]])
    assert [item["score"] for item in listed] == [-1.0] * 6


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


# ---------------------------------------------------------------------- the page in Chromium


def start_review_process(config_path: str | None, work: str, log_path: str, *, retrain: bool = False):
    """cleannet-review in a real subprocess; returns (process, URL) once it prints the URL.

    config_path None: no --config (the workdir's newest saved config)."""
    log = open(log_path, "ab")
    config_flag = [f"--config={config_path}"] if config_path else []
    process = subprocess.Popen([sys.executable, "-m", "cleannet_tf.cli.review", *config_flag,
                                f"--workdir={work}", "--port=0", "--user=tester",
                                "--retrain" if retrain else "--noretrain"],
                               stdout=subprocess.PIPE, stderr=log, cwd=REPO,
                               env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.decode()) for line in process.stdout], daemon=True).start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if "open http://" in line:
            return process, line.split("open ")[1].split()[0]
    process.kill()
    raise AssertionError(f"cleannet-review did not start: {open(log_path).read()[-3000:]}")


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Page:
    def __init__(self, driver):
        self.driver = driver

    def open(self, url: str):
        self.driver.get(url)
        wait_for(lambda: self.body().get_attribute("data-ready") == "yes", "the page to load")
        return self

    def body(self):
        return self.driver.find_element("tag name", "body")

    def press(self, keys: str):
        self.body().send_keys(keys)

    def cards(self) -> list[tuple[str, str]]:
        """(key, state) of the queue's grid, in order."""
        return [(card.get_attribute("data-key"), card.get_attribute("data-state"))
                for card in self.driver.find_elements("css selector", "#queue-grid .card")]

    def cursor_key(self) -> str:
        return self.driver.find_element("css selector", "#queue-grid .card.cursor").get_attribute("data-key")

    def decided(self) -> int:
        return int(self.driver.find_element("id", "progress-text").get_attribute("data-decided"))


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="No Chromium/chromedriver: install Debian's chromium and chromium-driver (.ci/run does).")
def test_page_keyboard_decisions_survive_reload_and_sigkill(workdir, browser, tmp_path):
    config_path, work, config = workdir
    log_path = str(tmp_path / "server.log")
    queue_keys = [entry["key"] for entry in proposals(work)]
    ramen = [key for key in queue_keys if key.startswith("ramen/")]
    process, url = start_review_process(config_path, work, log_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        page = Page(browser).open(url)
        assert [key for key, _ in page.cards()] == ramen  # the class without verification first, file order
        assert page.cursor_key() == ramen[0]
        page.press("y")  # correct
        wait_for(lambda: page.decided() == 1, "the first decision")
        page.press("n")  # wrong
        page.press("p")  # pick the right class: type-ahead, Enter
        picker_input = wait_for(lambda: browser.find_element("id", "picker-input").is_displayed()
                                and browser.find_element("id", "picker-input"), "the class picker")
        picker_input.send_keys("bak")
        assert [li.get_attribute("data-class") for li in browser.find_elements("css selector", "#picker-list li")
                ] == ["baklava"]
        picker_input.send_keys("\n")
        wait_for(lambda: page.decided() == 3, "three decisions")
        page.press("s")  # skip ramen[3]
        page.press("y")  # ramen[4] correct ...
        wait_for(lambda: page.decided() == 4, "the fourth decision")
        page.press("u")  # ... undone
        wait_for(lambda: page.decided() == 3 and dict(page.cards())[ramen[4]] == "open", "the undo")
        assert dict(page.cards()) == {ramen[0]: "correct", ramen[1]: "wrong", ramen[2]: "relabel",
                                      ramen[3]: "open", ramen[4]: "open", ramen[5]: "open"}
        expected = ["class_name/key\tverification_label", f"{ramen[0]}\t1", f"{ramen[1]}\t0", f"{ramen[2]}\t0"]
        assert review_rows(work) == expected
        relabel = [e for e in log_events(work) if e["event"] == "decide" and e["decision"] == "relabel"]
        assert [(e["key"], e["label"], e["chosen"], e["user"]) for e in relabel] == [
            (ramen[2], "ramen", "baklava", "tester")]

        # Reload: decided images have left the queue; the skipped one comes first.
        page.open(url.split("?")[0])  # the cookie carries the token now
        assert [key for key, _ in page.cards()] == ramen[3:] and page.cursor_key() == ramen[3]
        assert page.decided() == 3

        # Decide quickly, then SIGKILL the server as soon as the page shows the last decision.
        page.press("nyy")
        wait_for(lambda: page.decided() == 6, "three more decisions")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert review_rows(work) == expected + [f"{ramen[3]}\t0", f"{ramen[4]}\t1", f"{ramen[5]}\t1"]
        assert not [name for name in os.listdir(os.path.join(work, "review")) if ".tmp" in name]
        # ramen is done: the page moved on to the next class of the queue.
        next_class = [key for key in queue_keys if not key.startswith("ramen/")]
        assert page.cursor_key() == next_class[0]
    finally:
        process.kill()
        process.wait(timeout=30)

    process, url = start_review_process(None, work, log_path)  # the config saved by the first run
    try:
        page.open(url)  # a new token: the new URL
        assert page.decided() == 6
        assert [key for key, _ in page.cards()] == [key for key in next_class if key.split("/")[0] ==
                                                    next_class[0].split("/")[0]]
        assert page.cursor_key() == next_class[0]
        page.press("n")
        wait_for(lambda: page.decided() == 7, "a decision after the restart")
        assert review_rows(work)[-1] == f"{next_class[0]}\t0"
        ramen_item = browser.find_element("css selector", '#class-list li[data-class="ramen"] .count').text
        assert ramen_item.startswith("6/6")

        # Browse: filter to the flagged images, open an image's neighbours.
        from selenium.webdriver.support.ui import Select

        page.press("2")
        browse_cards = lambda: browser.find_elements("css selector", "#browse-grid .card")  # noqa: E731
        wait_for(lambda: len(browse_cards()) == 3 * PER_CLASS, "every image in the browse grid")
        Select(browser.find_element("id", "filter-flagged")).select_by_value("1")
        flagged = scores_tsv.read_scores_tsv(os.path.join(work, "verify", "scores.tsv")).noisy.sum()
        wait_for(lambda: len(browse_cards()) == flagged, "the flagged images")
        page.press("g")
        wait_for(lambda: len(browser.find_elements("css selector", "#neighbours-grid .card")) == 12, "neighbours")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    table = load_table(config, work)  # what cleannet-train reads on the next run
    row = {key: i for i, key in enumerate(table.keys)}
    assert [int(table.verification[row[key]]) for key in ramen] == [1, 0, 0, 0, 1, 1]


# ---------------------------------------------------------------------- retrain


@pytest.mark.slow
def test_retrain_runs_train_and_verify_with_the_review_labels(server):
    server, work = server
    client = Client(server.port, server.token)
    ramen = [entry["key"] for entry in proposals(work) if entry["key"].startswith("ramen/")]
    for key in ramen[:4]:
        assert client.request("POST", "/api/decide", {"key": key, "decision": "correct"})[0] == 200
    status, _, payload = client.request("POST", "/api/retrain", {})
    assert status == 200 and payload["started"]["before"]["detection_error"] == 0.25
    assert client.request("POST", "/api/retrain", {})[0] == 409  # one at a time
    log = ""
    deadline = time.monotonic() + 600
    while True:
        _, _, status_ = client.request("GET", f"/api/retrain?offset={len(log.encode())}")
        log += status_["log"]
        if not status_["running"]:
            break
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(1)
    entry = status_["history"][-1]
    assert entry["returncode"] == 0, log[-3000:]
    assert entry["decisions"] == 4 and entry["after"]["n_val"] == 12
    assert entry["after"]["detection_error"] is not None and entry["after"] != entry["before"]
    assert json.load(open(os.path.join(work, "review", "history.json"))) == status_["history"]
    # cleannet-train read the release's 4 verified training labels plus the 4 decisions.
    assert "train 24 (verified 8: 8 correct, 0 wrong)" in log
    assert "cleannet_tf.cli.verify" in log and os.path.exists(os.path.join(work, "cleannet", "model.keras"))
    new_proposals = {entry["key"] for entry in proposals(work)}
    assert not new_proposals & set(ramen[:4])  # decided images are not proposed again
    _, _, queue_ = client.request("GET", "/api/queue")  # the server reloaded cleannet-verify's new outputs
    assert {item["key"] for group in queue_["classes"] for item in group["items"]} == new_proposals
    assert "cleannet-train --config=" in status_["commands"]


def _children(pid: int) -> list[int]:
    """Child pids of `pid`: every /proc/<n>/stat whose parent field is `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone between listdir and open
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads child pids from Linux's /proc")
def test_a_sigkilled_server_takes_its_retrain_with_it(workdir, tmp_path):
    config_path, work, _ = workdir
    process, url = start_review_process(config_path, work, str(tmp_path / "server.log"), retrain=True)
    try:
        port, token = int(url.split(":")[2].split("/")[0]), url.split("token=")[1].split("&")[0]
        status, _, _ = Client(port, token).request("POST", "/api/retrain", {})
        assert status == 200
        train = wait_for(lambda: [pid for pid in _children(process.pid) if b"cleannet_tf.cli.train" in _cmdline(pid)],
                         "cleannet-train to start")[0]
        process.kill()
        process.wait(timeout=30)
        wait_for(lambda: not _alive(train), "the orphaned cleannet-train to stop", timeout=30)
        # Stopped, not finished: an orphan left running would go on to write the model.
        time.sleep(2)
        assert not os.path.exists(os.path.join(work, "cleannet", "model.keras")), _cmdline(train)
    finally:
        process.kill()
