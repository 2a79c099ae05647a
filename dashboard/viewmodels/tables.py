"""Metric tables for display: per category in %, beside the paper, several runs, before/after an ablation."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from spg_core.report import METRIC_TITLES, METRICS, PAPER_KEYS, paper_row

SHORT_TITLES = {  # column headers narrow enough for the runs overview to fit a projector's width
    "Image AUROC": "Image AUROC",
    "Image AP": "Image AP",
    "Pixel AUROC": "Pixel AUROC",
    "Pixel AUPRO (MVTec AD, exact)": "AUPRO exact",
    "Pixel AUPRO (official, AnomalyCLIP's)": "AUPRO official",
}


def setting_text(name: str, value: Any, backbone: str = "") -> str:
    """A configuration value in words: a missing weights file is the backbone's own (built-in) weights."""
    if name == "weights" and value is None:
        return "built in (no weights)" if backbone == "builtin" else "the backbone's packaged weights"
    return "not set" if value is None else str(value)


def percent(v: Any) -> float:
    """A 0-1 metric in %, NaN when missing."""
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * float(v)


def metrics_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """Per-category metrics in % (one row per category, the mean last), columns titled."""
    rows = {
        cat: {METRIC_TITLES[k]: percent(m.get(k)) for k in METRICS}
        for cat, m in sorted(metrics.get("per_category", {}).items())
    }
    rows["mean"] = {METRIC_TITLES[k]: percent(metrics.get("mean", {}).get(k)) for k in METRICS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "category"
    return frame


def paper_comparison(metrics: dict[str, Any]) -> tuple[str, pd.DataFrame] | None:
    """(paper row name, table of ours / paper / difference per category and metric) or None."""
    match = paper_row(metrics.get("settings", {}))
    if match is None:
        return None
    name, table = match
    ours = metrics_frame(metrics)
    rows = []
    for cat in ours.index:
        for key in METRICS:
            # Like with like: the paper's AUPRO is the official one (report.PAPER_KEYS).
            ref = table.get(PAPER_KEYS[key], {}).get(cat) if key in PAPER_KEYS else None
            mine = ours.loc[cat, METRIC_TITLES[key]]
            rows.append(
                {
                    "category": cat,
                    "metric": METRIC_TITLES[key],
                    "ours": mine,
                    "paper": float("nan") if ref is None else float(ref),
                    "difference": float("nan") if ref is None else mine - float(ref),
                }
            )
    return name, pd.DataFrame(rows)


def per_category_long(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """{run name: metrics_frame} -> long table (run, category, metric, value) for grouped bars."""
    parts = []
    for run, frame in frames.items():
        long = frame.reset_index().melt(id_vars="category", var_name="metric", value_name="value")
        long.insert(0, "run", run)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "category", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


def ablation_frame(before: dict[str, Any], after: dict[str, Any]) -> pd.DataFrame:
    """Per-category metrics (%) before and after an ablation, with the change, in long form."""
    a, b = metrics_frame(before), metrics_frame(after)
    rows = []
    for cat in a.index:
        for col in a.columns:
            rows.append(
                {
                    "category": cat,
                    "metric": col,
                    "before": a.loc[cat, col],
                    "after": b.loc[cat, col] if cat in b.index else float("nan"),
                }
            )
    frame = pd.DataFrame(rows)
    frame["change"] = frame["after"] - frame["before"]
    return frame
