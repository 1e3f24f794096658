"""WORKDIR/verify/report.html: what cleannet-verify found, for a person to look at (self-contained, offline).

    write_report(output_dir, keys=..., labels=..., scores=..., verification=..., validation=..., threshold=...,
                 class_names=..., image_paths=..., suggested_labels=..., metrics=metrics_json)

Sections: metrics.json's warnings (sanity.py; and the feature classifier's), its headline numbers (with the
calibration classes); the score histogram by verification label with the threshold;
ROC and precision-recall curves of the validation rows (verified classes, held-out classes) with the threshold's
point marked; the estimated noise rate per class (metrics.json's, from calibrated probabilities); for the
classes with the most suspected noise, the most suspicious images with their label and the suggested one.
Figures are PNGs beside report.html and embedded in it (data URIs), as are the thumbnails, so the file opens
anywhere with no network and no other file.

Imports nothing of the package.
"""

from __future__ import annotations

import base64
import html
import io
import os

import numpy as np

from cleannet_tf import atomic_io

FIGURES = ("scores_histogram.png", "roc_pr.png", "noise_rate_per_class.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, path: str) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _plt().close(figure)
    data = buffer.getvalue()
    atomic_io.write_bytes(path, data)
    return data


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _histogram(scores, verification, thresholds):
    """thresholds: (N,) each pair's: one line if they agree, the lowest and highest class threshold if not."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(7, 3.4))
    low, high = float(thresholds.min()), float(thresholds.max())
    bins = np.linspace(min(scores.min(), low) - 1e-6, max(scores.max(), high) + 1e-6, 60)
    for mask, name, color in ((verification < 0, "not verified", "#9e9e9e"),
                              (verification == 1, "verified correct", "#2e7d32"),
                              (verification == 0, "verified wrong", "#c62828")):
        if mask.any():
            axis.hist(scores[mask], bins=bins, density=True, alpha=0.55, color=color,
                      label=f"{name} ({int(mask.sum())})")
    if low == high:
        axis.axvline(low, color="black", linestyle="--", label=f"threshold {low:.3f}")
    else:
        for value in (low, high):
            axis.axvline(value, color="black", linestyle="--", linewidth=0.8)
        axis.plot([], [], color="black", linestyle="--", label=f"class thresholds {low:.3f} to {high:.3f}")
    axis.set_xlabel("score (low = label likely wrong)")
    axis.set_ylabel("density")
    axis.legend(fontsize=8)
    axis.set_title("Scores by verification label")
    return figure


def _curves(groups):
    """groups: [(name, scores, verification, thresholds)] of validation rows, each (n,)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    figure, (roc_axis, pr_axis) = plt.subplots(1, 2, figsize=(9, 3.6))
    for (name, scores, verification, thresholds), color in zip(groups, ("#1565c0", "#ef6c00"), strict=False):
        noisy = verification == 0
        if not 0 < noisy.sum() < len(noisy):
            continue
        false_positive, true_positive, _ = roc_curve(noisy, -scores)  # "noisy" is the positive class
        precision, recall, _ = precision_recall_curve(noisy, -scores)
        roc_axis.plot(false_positive, true_positive, color=color, label=name)
        pr_axis.plot(recall, precision, color=color, label=name)
        flagged = scores < thresholds
        tpr = (flagged & noisy).sum() / noisy.sum()
        fpr = (flagged & ~noisy).sum() / max((~noisy).sum(), 1)
        prec = (flagged & noisy).sum() / max(flagged.sum(), 1)
        roc_axis.plot([fpr], [tpr], "o", color=color)
        pr_axis.plot([tpr], [prec], "o", color=color)
    roc_axis.plot([0, 1], [0, 1], ":", color="#9e9e9e")
    roc_axis.set(xlabel="false-positive rate", ylabel="true-positive rate (wrong labels found)", title="ROC")
    pr_axis.set(xlabel="recall of wrong labels", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    for axis in (roc_axis, pr_axis):
        if axis.get_legend_handles_labels()[0]:  # no group with both kinds of rows: no curve to name
            axis.legend(fontsize=8, loc="lower right" if axis is roc_axis else "lower left")
    figure.suptitle("Validation rows; dots: the chosen threshold", fontsize=9)
    return figure


def _noise_rates(per_class, max_classes=40):
    plt = _plt()
    rows = sorted(((name, value) for name, value in per_class.items()
                   if value.get("noise_rate_estimate") is not None),
                  key=lambda item: -item[1]["noise_rate_estimate"])[:max_classes]
    figure, axis = plt.subplots(figsize=(7, 0.22 * len(rows) + 1.2))
    names = [name for name, _ in rows][::-1]
    estimates = [value["noise_rate_estimate"] for _, value in rows][::-1]
    colors = ["#ef6c00" if value.get("heldout") else "#1565c0" for _, value in rows][::-1]
    axis.barh(names, estimates, color=colors)
    verified = [(i, value["noise_rate_verified"]) for i, (_, value) in enumerate(rows[::-1])
                if value.get("noise_rate_verified") is not None]
    if verified:
        axis.plot([v for _, v in verified], [i for i, _ in verified], "k|", markersize=9,
                  label="verified noise rate (validation rows)")
        axis.legend(fontsize=8, loc="lower right")
    axis.set_xlabel("estimated noise rate (mean of 1 - P(label correct), calibrated); orange: held-out class")
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title(f"Noise rate per class (the {len(rows)} noisiest)")
    return figure


def _thumbnail(path: str, size: int = 96, max_pixels: int = 40_000_000) -> tuple[str | None, str]:
    """(JPEG data URI, "") of an image's thumbnail, or (None, why not): "unreadable", or "too large (W x H)" for
    an image over max_pixels by its header (checked before any pixel is decoded; data/images.py's limit)."""
    from PIL import Image

    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                return None, f"too large ({width} x {height})"
            image.draft("RGB", (size * 2, size))  # JPEG: decode at a reduced scale
            image = image.convert("RGB")
            image.thumbnail((size * 2, size))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=85)
    except Image.DecompressionBombError:  # PIL's own limit, over twice Image.MAX_IMAGE_PIXELS
        return None, "too large"
    except (OSError, ValueError, SyntaxError):
        return None, "unreadable"
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), ""


def _fmt(value, percent=False) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%}" if percent else (f"{value:.3f}" if isinstance(value, float) else str(value))


def write_report(output_dir: str, *, keys, labels, scores, verification, validation, threshold,
                 class_names, image_paths, suggested_labels, suggested_scores, metrics: dict, worst_classes: int = 6,
                 images_per_class: int = 8, rank_scores=None) -> str:
    """Writes output_dir/report.html and its PNG figures; returns the report's path.

    Args:
        keys, image_paths: (N,) str. labels, suggested_labels: (N,) int class ids. scores, suggested_scores:
            (N,) float (the most suspicious images: lowest score, then lowest rank_score, then highest suggested
            score). rank_scores: optional (N,) float that orders images the score ties (the stacked logit).
        verification: (N,) int 1 / 0 / -1. validation: (N,) bool rows of verified_val (the curves).
        threshold: float, or (N,) each pair's (its class's operating point). class_names: C str. metrics: the
            dict of WORKDIR/verify/metrics.json (missing or None
        values are shown as n/a). worst_classes, images_per_class: the grid of suspicious images.
    """
    os.makedirs(output_dir, exist_ok=True)
    scores = np.asarray(scores, np.float64)
    thresholds = np.broadcast_to(np.asarray(threshold, np.float64), scores.shape)  # (N,) each pair's
    flagged = scores < thresholds
    labels, suggested_labels = np.asarray(labels), np.asarray(suggested_labels)
    suggested_scores = np.asarray(suggested_scores, np.float64)
    verification, validation = np.asarray(verification), np.asarray(validation, bool)
    class_names = list(class_names)
    heldout = {name for name, value in metrics.get("per_class", {}).items() if value.get("heldout")}
    held_rows = np.array([name in heldout for name in class_names], bool)[labels]  # (N,), O(N) memory

    sample = np.random.default_rng(0).permutation(len(scores))[:200_000]  # plots stay fast at millions of rows
    figures = {
        "scores_histogram.png": _histogram(scores[sample], verification[sample], thresholds[sample]),
        "roc_pr.png": _curves([(f"{name} ({int(rows.sum())} rows)", scores[rows], verification[rows], thresholds[rows])
                               for name, rows in (("verified classes", validation & ~held_rows),
                                                  ("held-out classes", validation & held_rows))]),
    }
    if metrics.get("per_class"):
        figures["noise_rate_per_class.png"] = _noise_rates(metrics["per_class"])
    pngs = {name: _save_figure(figure, os.path.join(output_dir, name)) for name, figure in figures.items()}

    per_class = metrics.get("per_class", {})
    ranked_classes = sorted(per_class, key=lambda name: -(per_class[name].get("noise_rate_estimate") or 0.0))
    grids = []
    for name in ranked_classes[:worst_classes]:
        c = class_names.index(name)
        rows = np.nonzero((labels == c) & flagged)[0]
        rank = scores if rank_scores is None else np.asarray(rank_scores)
        rows = rows[np.lexsort((-suggested_scores[rows], rank[rows], scores[rows]))][:images_per_class]
        cells = []
        for row in rows:
            uri, problem = _thumbnail(str(image_paths[row]))
            image = (f'<img src="{uri}" alt="{html.escape(str(keys[row]))}">' if uri
                     else f'<div class="missing">{problem}</div>')
            cells.append(f'<figure>{image}<figcaption><b>{html.escape(name)}</b> → '
                         f'{html.escape(class_names[suggested_labels[row]])}<br>score {scores[row]:.3f}<br>'
                         f'<span class="key">{html.escape(str(keys[row]))}</span></figcaption></figure>')
        info = per_class[name]
        kind = " (held out)" if info.get("heldout") else " (calibration class)" if info.get("calibration") else ""
        grids.append(f'<h3>{html.escape(name)}{kind}: estimated noise '
                     f'{_fmt(info.get("noise_rate_estimate"), True)} of {info.get("images", "?")} images</h3>'
                     f'<div class="grid">{"".join(cells) or "<p>none below the threshold</p>"}</div>')

    per_class_thresholds = (f" (per class: {thresholds.min():.3f} to {thresholds.max():.3f})"
                            if thresholds.min() < thresholds.max() else "")
    headline = [("threshold", _fmt(metrics.get("threshold")) + per_class_thresholds),
                ("detection error, verified classes", _fmt(metrics.get("detection_error"), True)),
                ("detection error, held-out classes", _fmt(metrics.get("detection_error_heldout"), True)),
                ("ROC-AUC, verified / held-out", f'{_fmt(metrics.get("roc_auc"))} / '
                                                 f'{_fmt(metrics.get("roc_auc_heldout"))}'),
                ("precision / recall / F1 of wrong labels",
                 f'{_fmt(metrics.get("precision"))} / {_fmt(metrics.get("recall"))} / {_fmt(metrics.get("f1"))}'),
                ("validation rows, verified / held-out", f'{_fmt(metrics.get("n_val"))} / '
                                                        f'{_fmt(metrics.get("n_val_heldout"))}'),
                ("estimated noise rate (calibrated P(label correct))",
                 _fmt(metrics.get("noise_rate_estimate"), True)),
                ("images flagged", f'{int(flagged.sum())} of {len(scores)} ({flagged.mean():.1%})')]
    if metrics.get("calibration_classes"):
        headline.append(("calibration classes (cleannet.calibration_fraction; verified, not held out)",
                         f'{len(metrics["calibration_classes"])}: {", ".join(metrics["calibration_classes"][:20])}'
                         + (" ..." if len(metrics["calibration_classes"]) > 20 else "")))
    warnings = "".join(f'<p class="warning">Warning: {html.escape(text)}</p>'
                       for text in [*(metrics.get("features_warnings") or ()), *(metrics.get("warnings") or ())])
    table = "".join(f'<tr><th>{html.escape(k)}</th><td data-metric="{html.escape(k)}">{html.escape(v)}</td></tr>'
                    for k, v in headline)
    images = "".join(f'<img class="figure" src="{_data_uri(pngs[name])}" alt="{name}">' for name in FIGURES
                     if name in pngs)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>cleannet_tf verification report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #212121; }}
table {{ border-collapse: collapse; }} th, td {{ padding: 4px 12px; text-align: left; border-bottom: 1px solid #eee; }}
img.figure {{ display: block; max-width: 100%; margin: 1em 0; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 10px; }}
figure {{ margin: 0; width: 150px; font-size: 11px; }} figure img {{ max-width: 150px; max-height: 96px; }}
.warning {{ background: #fff3e0; border-left: 4px solid #e65100; padding: 6px 12px; }}
.key {{ color: #757575; word-break: break-all; }} .missing {{ width: 96px; height: 96px; background: #eee; }}
</style></head>
<body data-images-loaded="no">
<h1>Which labels look wrong</h1>
<p>Scores from <code>cleannet-verify</code> (mode {html.escape(str(metrics.get("mode", "?")))}); a label is flagged
when its score is below the threshold chosen on the verified classes' validation rows. Full list:
<code>scores.tsv</code>; the next images to verify: <code>to_verify.tsv</code>.</p>
{warnings}<table>{table}</table>
<h2>Figures</h2>{images}
<h2>Most suspicious images of the noisiest classes</h2>
<p>Each image: its label → the suggested label, and its score.</p>
{"".join(grids)}
<script>
Promise.all(Array.from(document.images).map(function (img) {{
  return img.complete ? Promise.resolve() : new Promise(function (done) {{ img.onload = img.onerror = done; }});
}})).then(function () {{
  var broken = Array.from(document.images).filter(function (img) {{ return img.naturalWidth === 0; }}).length;
  document.body.setAttribute("data-images-loaded", broken ? "broken:" + broken : "all:" + document.images.length);
}});
</script>
</body></html>
"""
    path = os.path.join(output_dir, "report.html")
    atomic_io.write_text(path, page)
    return path
