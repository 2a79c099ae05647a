"""Tables from metrics.json: the terminal table, per_category.csv, and report.md.

report.md follows the paper's Tables S1-S8 (one table per metric, one row per
category plus the mean) and, when the run's backbone and direction match a row
of the paper, puts the paper's SPG figures beside ours with the difference.
"""

from __future__ import annotations

import csv
import io
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from .atomic import read_json, write_text
from .metrics import METRIC_KEYS as METRICS

METRIC_TITLES = {
    "image_auroc": "Image AUROC",
    "image_ap": "Image AP",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "Pixel AUPRO (MVTec AD, exact)",
    "aupro_official": "Pixel AUPRO (official, AnomalyCLIP's)",
}
# Which of the paper's columns each of our metrics compares with, like with like: the paper's
# AUPRO is the official code's (200 thresholds, FPR rescaled), so the exact MVTec AUPRO has none.
PAPER_KEYS = {
    "image_auroc": "image_auroc",
    "image_ap": "image_ap",
    "pixel_auroc": "pixel_auroc",
    "aupro_official": "aupro",
}
_PAPER_BACKBONES = {"dinov3-vitl16": "SPG (DINOv3)", "openclip-vitl14-336": "SPG (OpenCLIP)"}


def paper_results() -> dict[str, Any]:
    """The paper's per-category tables S1-S8 (percent), all methods."""
    return json.loads(resources.files("spg_core").joinpath("paper_results.json").read_text())


def dataset_kind(spec: str) -> str | None:
    """'mvtec:...' -> 'MVTec AD', 'visa:...' -> 'VisA', anything else -> None."""
    prefix = spec.split(":", 1)[0].lower()
    return {"mvtec": "MVTec AD", "visa": "VisA"}.get(prefix)


def paper_row(settings: dict[str, Any]) -> tuple[str, dict[str, dict[str, float]]] | None:
    """The paper's SPG results for this run's direction and backbone, when there are any."""
    aux, target = dataset_kind(settings.get("aux", "")), dataset_kind(settings.get("target", ""))
    method = _PAPER_BACKBONES.get(settings.get("backbone", ""))
    if not aux or not target or aux == target or method is None or settings.get("method", "spg") != "spg":
        return None
    direction = f"{aux}->{target}"
    return f"{method}, {direction}", paper_results()[direction][method]


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _val(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    return float("nan") if v is None else float(v)


def metrics_table(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows [category, four metrics in %] plus the mean row."""
    rows = [[cat] + [_fmt(m.get(k)) for k in METRICS] for cat, m in sorted(metrics["per_category"].items())]
    rows.append(["mean"] + [_fmt(metrics["mean"].get(k)) for k in METRICS])
    return rows


def print_metrics(metrics: dict[str, Any], title: str = "") -> None:
    """A fixed-width table of the per-category metrics (%), mean last."""
    header = ["category", "img AUROC", "img AP", "px AUROC", "AUPRO", "AUPRO off."]
    rows = metrics_table(metrics)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    if title:
        print(title)
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    print(line)
    for r in rows:
        if r[0] == "mean":
            print(line)
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))


def per_category_csv(metrics: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["category", *METRICS])
    for cat, m in sorted(metrics["per_category"].items()):
        writer.writerow([cat] + [_val(m, k) for k in METRICS])
    writer.writerow(["mean"] + [_val(metrics["mean"], k) for k in METRICS])
    return buf.getvalue()


def report_markdown(metrics: dict[str, Any]) -> str:
    """report.md text: settings, then one table per metric in the layout of Tables S1-S8."""
    settings = metrics.get("settings", {})
    paper = paper_row(settings)
    out = [f"# SPG report: {settings.get('aux', '?')} -> {settings.get('target', '?')}", ""]
    out.append(
        f"Backbone `{settings.get('backbone', '?')}`, method `{settings.get('method', 'spg')}`, "
        f"protocol `{settings.get('protocol', 'studio')}`, image score `{settings.get('aggregation', 'max')}`"
        f" of `{settings.get('image_score', 'map')}`."
    )
    out.append(
        f"Two AUPROs: `aupro` is the exact MVTec AD definition (every threshold, area up to FPR "
        f"{settings.get('max_fpr', 0.3)} / {settings.get('max_fpr', 0.3)}; definition "
        f"`{settings.get('aupro_variant', 'mvtec')}`), `aupro_official` the official code's "
        "(AnomalyCLIP's: 200 thresholds, FPR < 0.3 rescaled to [0, 1]); the paper reports the latter, "
        f"so only it is compared with the paper. Map smoothing sigma {settings.get('smoothing_sigma', 0.0)}, "
        f"evaluated at {settings.get('eval_resolution', 'input')} resolution "
        f"({settings.get('image_size', '?')} px). Values in %."
    )
    for w in metrics.get("warnings", []):
        out.append(f"\n> note: {w}")
    if paper is None:
        out.append(
            "\nNo row of the paper matches this run (paper rows: DINOv3 or OpenCLIP, SPG, "
            "MVTec AD <-> VisA), so no comparison is shown."
        )
    for key in METRICS:
        out += ["", f"## {METRIC_TITLES[key]}", ""]
        paper_key = PAPER_KEYS.get(key)
        if paper and paper_key is None:
            out += ["The paper reports no figure under this definition.", ""]
        if paper and paper_key:
            name, table = paper
            out += [f"| Category | Ours | {name} | Difference |", "|---|---|---|---|"]
        else:
            out += ["| Category | Ours |", "|---|---|"]
        cats = sorted(metrics["per_category"]) + ["mean"]
        for cat in cats:
            ours = metrics["mean"] if cat == "mean" else metrics["per_category"][cat]
            cells = [cat, _fmt(ours.get(key))]
            if paper and paper_key:
                ref = table.get(paper_key, {}).get(cat)
                v = ours.get(key)
                diff = "n/a" if ref is None or v is None or math.isnan(v) else f"{100 * v - ref:+.1f}"
                cells += ["–" if ref is None else f"{ref:.1f}", diff]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_reports(run_dir: str | Path) -> None:
    """Write per_category.csv and report.md beside the run's metrics.json."""
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json", what="metrics")
    write_text(run_dir / "per_category.csv", per_category_csv(metrics))
    write_text(run_dir / "report.md", report_markdown(metrics))
