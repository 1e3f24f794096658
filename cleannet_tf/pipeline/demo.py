"""The demo's library side: run the existing steps on the demo data, summarise.

The summary measures what the demo data makes measurable: its true labels are
known (meta/truth.tsv), so the realised noise and how well the features separate
wrong labels from right ones are exact.

Imports `config`, `data`, `detection`, `ops`, `pipeline.extract`, `pipeline.workdir`, `serving`, `training`.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import socket
import time
import urllib.request
from json import load as json_load

import ml_collections
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from cleannet_tf import ops
from cleannet_tf.data import demo
from cleannet_tf.data import table as data_table
from cleannet_tf.pipeline import records, runner, scores_tsv
from cleannet_tf.pipeline.artifacts import open_features
from cleannet_tf.pipeline.workdir import classifier_output_dir, export_dir, resolve_data_root, verify_dir
from cleannet_tf.training import distribute, metrics


def centroid_cosine_scores(features: np.ndarray, labels: np.ndarray, pool: np.ndarray, num_classes: int) -> np.ndarray:
    """Weakly supervised baseline: cosine of each image to its label's (plain) class mean.

    Args:
        features: (N, D) float. labels: (N,) int. pool: (N,) bool rows that form the means.
    Returns:
        (N,) float scores; low = likely wrong label.
    """
    normalized = ops.log_normalize(features)
    means = ops.class_means(normalized[pool], labels[pool], num_classes=num_classes)
    return np.einsum("nd,nd->n", normalized, means[labels])


def run_demo(config: ml_collections.ConfigDict, workdir: str, table: data_table.LabelTable) -> dict:
    """Runs every step whose outputs are not complete; returns the summary numbers."""
    strategy = distribute.build_strategy(config.runtime.strategy)
    summary = {"steps": runner.run_steps(config, workdir, table=table, strategy=strategy)}

    root = resolve_data_root(config, workdir)
    # The user's own data under the demo's settings (load_table) has no known true labels.
    truth = demo.read_demo_truth(root) if demo.holds_demo_dataset(root) else {}
    pool = table.split != data_table.SPLIT_TEST
    true_labels = np.array([truth.get(key, -1) for key in table.keys])
    is_wrong = (true_labels != table.labels) & pool
    features = open_features(config, workdir, table)
    scores = centroid_cosine_scores(features.load_all(), table.labels, pool & features.valid(), table.num_classes)
    heldout_rows = pool & table.heldout_classes[table.labels]
    summary["detection"] = _detection_summary(config, workdir, table, scores)
    summary["suspicious"] = _most_suspicious(workdir, truth, table.class_names, count=10)
    summary["served"] = _verify_through_the_server(workdir, table, summary["suspicious"])
    summary["classifier_accuracy"] = {}
    for weighting in ["none", *records.weighted_classifiers(config)]:
        with open(os.path.join(classifier_output_dir(workdir, weighting), "metrics.json")) as f:
            summary["classifier_accuracy"][weighting] = json_load(f)["test_accuracy"]
    summary.update(
        dataset=root, images=int(pool.sum()), test_images=int((~pool).sum()), classes=table.num_classes,
        noise_rate=float(is_wrong[pool].mean()) if truth else None, heldout_classes=int(table.heldout_classes.sum()),
        verified_train=int(((table.verification >= 0) & (table.split == data_table.SPLIT_TRAIN)).sum()),
        verified_val=int(((table.verification >= 0) & (table.split == data_table.SPLIT_VAL)).sum()),
        centroid_auc=float(roc_auc_score(~is_wrong[pool], scores[pool])) if truth else None,
        centroid_auc_heldout=(float(roc_auc_score(~is_wrong[heldout_rows], scores[heldout_rows]))
                              if truth and heldout_rows.any() else None),
        replicas=strategy.num_replicas_in_sync, devices=[d.name for d in tf.config.list_logical_devices()])
    summary["workdir"] = workdir  # the summary's last line: the cleannet-review command
    summary["warnings"] = records.recorded_warnings(config, workdir)
    return summary


def _detection_summary(config, workdir, table, centroid_scores) -> dict:
    """CleanNet's and the centroid baseline's detection error on the same validation rows.

    Both thresholds are chosen on verified classes' validation rows and applied
    unchanged to the held-out classes' rows, as a user without their labels would.
    """
    with open(f"{verify_dir(workdir)}/metrics.json") as f:
        cleannet = json_load(f)
    val = (table.split == data_table.SPLIT_VAL) & (table.verification >= 0)
    seen, held = val & ~table.heldout_classes[table.labels], val & table.heldout_classes[table.labels]
    threshold, error = metrics.best_threshold(centroid_scores[seen], table.verification[seen])
    baseline = {"detection_error": error, "detection_error_heldout": None,
                "detection_error_all": metrics.detection_metrics(centroid_scores[val], table.verification[val],
                                                                 threshold)["error"]}
    if held.any():
        baseline["detection_error_heldout"] = metrics.detection_metrics(
            centroid_scores[held], table.verification[held], threshold)["error"]
    return {"cleannet": {**{k: cleannet[k] for k in ("mode", "detection_error", "detection_error_heldout",
                                                      "detection_error_all", "roc_auc", "roc_auc_heldout",
                                                      "threshold")},
                         "signals": [name for name, w in cleannet.get("signal_weights", {}).items() if w]},
            "centroid": baseline}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rest_verify_body(label_name: str, image_b64: str) -> str:
    """The REST :predict body that verifies one image (base64) against a label name (verify_label_name)."""
    return json.dumps({"signature_name": "verify_label_name",
                       "instances": [{"image_bytes": {"b64": image_b64}, "label_name": label_name}]})


def _verify_through_the_server(workdir: str, table: data_table.LabelTable, suspicious: list[dict]) -> dict:
    """Starts cleannet-serve's server on WORKDIR/saved_models (free loopback gRPC and REST ports), verifies demo
    images with the official TF Serving stub (three suspicious ones, two others), classifies one, verifies the
    first through REST as the summary's curl line does; stops the server."""
    from cleannet_tf import serving

    models_config = os.path.join(export_dir(workdir), "models.config")
    server = serving.start_server(model_config_file=models_config, port=0, rest_port=_free_port())
    try:
        flagged = {row["key"] for row in suspicious}
        others = [key for key in table.keys[table.split == data_table.SPLIT_TRAIN][::97] if key not in flagged][:2]
        keys = [row["key"] for row in suspicious[:3]] + others
        row_of = {key: row for row, key in enumerate(table.keys)}
        rows = [row_of[key] for key in keys]
        labels = [table.class_names[table.labels[row]] for row in rows]
        with serving.Client(f"127.0.0.1:{server.port}") as client:
            start = time.perf_counter()
            verdicts = client.verify_image([table.paths[row] for row in rows], labels)
            seconds = time.perf_counter() - start
            classified = client.classify_image(table.paths[rows[0]], top=1)[0][0]
        with open(table.paths[rows[0]], "rb") as f:
            body = rest_verify_body(labels[0], base64.b64encode(f.read()).decode("ascii"))
        request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/cleannet_verifier:predict",
                                         data=body.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            rest = json.load(response)["predictions"][0]
    finally:
        server.stop(grace=1)
    return {"port": server.port, "rest_port": server.rest_port, "models_config": models_config,
            "example": {"path": str(table.paths[rows[0]]), "label": labels[0], "rest_score": float(rest["score"])},
            "seconds": seconds, "classified": (keys[0], *classified),
            "rows": [{"key": key, "label": label, "score": float(score), "noisy": bool(noisy),
                      "suggested": table.class_names[int(suggested)]}
                     for key, label, score, noisy, suggested in zip(
                         keys, labels, verdicts["score"], verdicts["is_noisy"], verdicts["suggested_label"],
                         strict=True)]}


def _most_suspicious(workdir: str, truth: dict[str, int], class_names, *, count: int) -> list[dict]:
    """The `count` lowest-scored images of WORKDIR/verify/scores.tsv, with their true label (demo only)."""
    scores = scores_tsv.read_scores_tsv(f"{verify_dir(workdir)}/scores.tsv")
    # Lowest rank score first (the stacked logit: it still orders the images whose score is -1.000).
    order = np.lexsort((-scores.suggested_scores, scores.rank_score))[:count]
    return [{"key": str(scores.keys[i]), "label": str(scores.labels[i]), "score": float(scores.scores[i]),
             "rank_score": float(scores.rank_score[i]),
             "suggested": str(scores.suggested_labels[i]),
             "true": class_names[truth[scores.keys[i]]] if scores.keys[i] in truth else "?"} for i in order]


def format_summary(summary: dict, *, seconds: float) -> str:
    lines = [
        "",
        "cleannet_tf demo",
        f"  dataset        {summary['dataset']}",
        f"  images         {summary['images']} in {summary['classes']} classes (+{summary['test_images']} clean test)",
        (f"  true noise     {summary['noise_rate']:.1%} of the noisy labels are wrong"
         if summary["noise_rate"] is not None else "  true noise     unknown (not a demo dataset: no true labels)"),
        f"  verified       {summary['verified_train']} train + {summary['verified_val']} val labels; "
        f"{summary['heldout_classes']} classes held out (no verified train labels)",
    ]
    for step, status in summary["steps"].items():
        lines.append(f"  {step:<14} {status}")
    detection = summary["detection"]

    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"

    lines.append("  detection error on verified validation labels (threshold chosen on verified classes):")
    lines.append(f"    {'':<30} {'verified classes':>16} {'held-out classes':>17} {'all':>6}")
    for name, key in ((f"cleannet-verify ({detection['cleannet']['mode']} mode)", "cleannet"),
                      ("class-centroid cosine", "centroid")):
        lines.append(f"    {name:<30} {pct(detection[key]['detection_error']):>16} "
                     f"{pct(detection[key]['detection_error_heldout']):>17} "
                     f"{pct(detection[key]['detection_error_all']):>6}")
    if detection["cleannet"]["signals"]:
        lines.append(f"    (stacked score of: {', '.join(detection['cleannet']['signals'])})")
    if summary.get("suspicious"):
        lines.append("  the ten most suspicious labels (cleannet-verify; full list in verify/scores.tsv):")
        lines.append(f"    {'image':<46} {'label':>8} {'score':>7} {'rank':>7} {'suggested':>10} {'true':>8}")
        for row in summary["suspicious"]:
            lines.append(f"    {row['key']:<46} {row['label']:>8} {row['score']:>7.3f} "
                         f"{row['rank_score']:>7.1f} {row['suggested']:>10} {row['true']:>8}")
    served = summary.get("served")
    if served:
        lines.append(f"  served         saved_models/ through the TF Serving gRPC API (127.0.0.1:{served['port']}); "
                     f"{len(served['rows'])} images verified in {served['seconds'] * 1000:.0f} ms:")
        for row in served["rows"]:
            verdict = f"WRONG LABEL? suggests {row['suggested']}" if row["noisy"] else "label looks right"
            lines.append(f"    {row['key']:<46} {row['label']:>8} {row['score']:>7.3f}  {verdict}")
        key, name, score = served["classified"]
        lines.append(f"    classifier (Classify API): {key} -> {name} ({score:.2f})")
        lines += try_it_lines(served)
    if summary.get("classifier_accuracy"):
        lines.append("  classifier test accuracy by training weights (clean test images): " + ", ".join(
            f"{name} {pct(value)}" for name, value in summary["classifier_accuracy"].items()))
    if summary.get("workdir"):
        lines.append(f"  review         cleannet-review --workdir={summary['workdir']}   (verify the proposed labels "
                     "in a browser)")
    lines.append(f"  time           {seconds:.0f} s on {summary['replicas']} replica(s)")
    for warning in summary.get("warnings", ()):
        lines.append(f"  WARNING        {warning}")
    return "\n".join(lines)


def try_it_lines(served: dict) -> list[str]:
    """The summary's copyable lines: the server command (its ports), then curl (REST) and Python (gRPC)."""
    example, port, rest_port = served["example"], served["port"], served["rest_port"]
    shell_body = rest_verify_body(example["label"], "@@IMAGE_B64@@").replace("\\", "\\\\").replace('"', '\\"')
    shell_body = shell_body.replace("$", "\\$").replace("`", "\\`")
    shell_body = shell_body.replace("@@IMAGE_B64@@", f"$(base64 -w0 {shlex.quote(example['path'])})")
    python = (f'from cleannet_tf.serving import Client; print(Client("127.0.0.1:{port}").verify_image('
              f'{json.dumps(example["path"])}, {json.dumps(example["label"])}))')
    return [
        f"  try it         the demo's server has stopped; this serves the same models on the same ports "
        f"(REST gave score {example['rest_score']:.3f} for the first image):",
        f"    cleannet-serve --model_config_file={shlex.quote(served['models_config'])} --port={port} "
        f"--rest_api_port={rest_port} &",
        f"    curl -s -X POST 127.0.0.1:{rest_port}/v1/models/cleannet_verifier:predict -d \"{shell_body}\"",
        f"    python -c {shlex.quote(python)}"]
