"""Target images at a decision threshold: outcomes, filters, patch picking, and number formats."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

OUTCOME_FILTERS = {
    "all images": None,
    "false positives": "FP",
    "false negatives": "FN",
    "true positives": "TP",
    "true negatives": "TN",
}


def outcome(score: float, label: int, threshold: float) -> str:
    """'TP', 'FP', 'FN' or 'TN' for an image predicted anomalous when score >= threshold."""
    predicted = score >= threshold
    if label:
        return "TP" if predicted else "FN"
    return "FP" if predicted else "TN"


def short_name(path: str) -> str:
    """'defect/000.png' from an image path: enough to tell images apart on a page."""
    return f"{Path(path).parent.name}/{Path(path).name}"


def target_table(rows: list[dict[str, Any]], threshold: float) -> pd.DataFrame:
    """scores.csv rows -> DataFrame with the outcome at `threshold` and a short image name."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["index", "image_path", "category", "defect", "label", "score", "outcome", "name"])
    frame["outcome"] = [outcome(s, lab, threshold) for s, lab in zip(frame["score"], frame["label"])]
    frame["name"] = [short_name(p) for p in frame["image_path"]]
    return frame


def image_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """A token store's image records -> DataFrame with their store index and a short name
    (columns index, image_path, category, defect, label, name)."""
    frame = pd.DataFrame(records, columns=["image_path", "category", "defect", "label"])
    frame.insert(0, "index", range(len(frame)))
    frame["name"] = [short_name(p) for p in frame["image_path"]]
    return frame


def filter_targets(
    frame: pd.DataFrame, category: str | None = None, defect: str | None = None, kind: str | None = None
) -> pd.DataFrame:
    """Rows of `target_table` for a category, defect type and outcome ('FP', 'FN', ...; None = any)."""
    keep = np.ones(len(frame), dtype=bool)
    if category:
        keep &= (frame["category"] == category).to_numpy()
    if defect:
        keep &= (frame["defect"] == defect).to_numpy()
    if kind:
        keep &= (frame["outcome"] == kind).to_numpy()
    return frame[keep]


def common_targets(tables: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Target images scored by every run: {run: scores.csv rows} -> image_path, category, defect, label,
    and each run's row index (column per run)."""
    frames = []
    for run, rows in tables.items():
        f = pd.DataFrame(rows)[["image_path", "category", "defect", "label", "index"]].rename(columns={"index": run})
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=["image_path", "category", "defect", "label"])
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f[["image_path", f.columns[-1]]], on="image_path", how="inner")
    out["name"] = [short_name(p) for p in out["image_path"]]
    return out


def patch_at(row: int, col: int, grid: tuple[int, int]) -> int:
    """Flat patch index of grid cell (row, col), clamped to the grid."""
    h, w = grid
    return int(min(max(row, 0), h - 1) * w + min(max(col, 0), w - 1))


def peak_patch(probs: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the most anomalous patch of `[N]` (or `[h, w]`) patch probabilities."""
    flat = int(np.argmax(np.asarray(probs).reshape(-1)))
    return divmod(flat, grid[1])


def most_changed(before: Any, after: Any, k: int = 12) -> list[int]:
    """Indices of the `k` images whose score changed most (largest |after - before| first)."""
    delta = np.abs(np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64))
    return [int(i) for i in np.argsort(-delta, kind="stable")[:k]]


def format_score(value: float) -> str:
    """An image score or probability for display: 3 decimals, or 3 significant digits when tiny."""
    value = float(value)
    return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def threshold_range(scores: Iterable[float]) -> tuple[float, float, float, str]:
    """(min, max, step, printf format) of a threshold slider spanning the run's image scores.

    Scores are probabilities, but a weak run can have every score below 1e-3, where a fixed
    [0, 1] slider could not separate them; the slider follows the scores instead.
    """
    s = np.asarray(list(scores), dtype=np.float64)
    lo, hi = (float(s.min()), float(s.max())) if s.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        hi = lo + max(abs(lo) * 1e-3, 1e-9)
    step = float(f"{(hi - lo) / 500:.2g}")
    lo = float(np.floor(lo / step) * step)
    hi = float(np.ceil(hi / step) * step)
    return lo, hi, step, "%.3f" if step >= 1e-3 else "%.2e"
