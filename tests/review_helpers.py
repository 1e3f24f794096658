"""Shared by the cleannet-review tests: a small workdir written with the project's writers (a Food-101N tree of
real JPEGs and PNGs, precomputed features, references.npz, WORKDIR/verify/{scores.tsv, to_verify.tsv,
metrics.json}), a plain HTTP client, and cleannet-review in a subprocess. conftest.py's `workdir` and `server`
fixtures use them."""

from __future__ import annotations

import http.client
import json
import os
import queue
import runpy
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
from conftest import TINY_CONFIG
from PIL import Image

from cleannet_tf import config as config_lib
from cleannet_tf.data import table as data_table
from cleannet_tf.features.references import ReferenceSets
from cleannet_tf.pipeline import scores_tsv, to_verify
from cleannet_tf.pipeline import workdir as workdir_lib
from cleannet_tf.pipeline.table import load_table
from cleannet_tf.pipeline.workdir import references_path
from cleannet_tf.training import checkpointing

CLASSES = ("apple_pie", "baklava", "ramen")
PER_CLASS = 12
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
        import runpy

        def get_config():
            c = runpy.run_path({TINY_CONFIG!r})["get_config"]()  # configs/tiny.py, smaller still: 36 images
            c.data.root = {str(root)!r}
            c.data.features = {str(tmp_path / "features.npz")!r}
            c.refs.num_references = 2
            c.cleannet.query_hidden_dim = 16
            c.cleannet.reference_hidden_dim = 16
            c.cleannet.attention_dim = 8
            c.cleannet.embed_dim = 8
            c.train.steps = {train_steps}
            c.train.batch_size = 8
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


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def review_files(work: str) -> dict:
    directory = os.path.join(work, "review")
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


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
