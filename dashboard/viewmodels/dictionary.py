"""The whole dictionary as one table: firing density, mean activation, tag, flags, guide weight; filters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

GUIDE_CLASSES = ("anomaly", "normal", "both", "neither")
DENSITY_BIN = 0.25  # log10 units per bar of the density histogram


def guide_class(atom: int, anomaly: dict[int, float], normal: dict[int, float]) -> str:
    """'anomaly', 'normal', 'both' or 'neither': which guides give `atom` a coefficient."""
    a, n = atom in anomaly, atom in normal
    return "both" if a and n else "anomaly" if a else "normal" if n else "neither"


def dictionary_table(stats: pd.DataFrame, ranking: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """One row per atom: atom, frequency, log10_frequency (NaN for dead atoms), mean_activation, tag,
    flags ("" when none), top_category ("" when none), guide (GUIDE_CLASSES), anomaly_share and
    normal_share (% of each guide, 0 when inactive)."""
    anomaly = {int(a["atom"]): float(a["share"]) for a in ranking.get("anomaly", [])}
    normal = {int(a["atom"]): float(a["share"]) for a in ranking.get("normal", [])}
    atoms = stats["atom"].astype(int).to_numpy()
    freq = stats["frequency"].astype(float).to_numpy()
    flags = stats["flags"] if "flags" in stats.columns else pd.Series([""] * len(stats))
    with np.errstate(divide="ignore"):
        log_freq = np.where(freq > 0, np.log10(np.where(freq > 0, freq, 1.0)), np.nan)
    return pd.DataFrame(
        {
            "atom": atoms,
            "frequency": freq,
            "log10_frequency": log_freq,
            "mean_activation": stats["mean_activation"].astype(float).to_numpy(),
            "tag": stats["tag"].astype(str).to_numpy(),
            "flags": [f if isinstance(f, str) else "" for f in flags],
            "top_category": [c if isinstance(c, str) else "" for c in stats["top_category"]],
            "guide": [guide_class(int(a), anomaly, normal) for a in atoms],
            "anomaly_share": [100.0 * anomaly.get(int(a), 0.0) for a in atoms],
            "normal_share": [100.0 * normal.get(int(a), 0.0) for a in atoms],
        }
    )


def density_histogram(table: pd.DataFrame, bin_width: float = DENSITY_BIN) -> tuple[np.ndarray, np.ndarray]:
    """(counts, edges) of log10 firing frequency over the live atoms, bins `bin_width` wide on whole multiples."""
    values = table["log10_frequency"].dropna().to_numpy()
    if not len(values):
        return np.zeros(0, dtype=int), np.zeros(1)
    lo = np.floor(values.min() / bin_width) * bin_width
    hi = max(np.ceil(values.max() / bin_width) * bin_width, lo + bin_width)
    edges = np.arange(lo, hi + bin_width / 2, bin_width)
    counts, edges = np.histogram(values, bins=edges)
    return counts, edges


def filter_atoms(
    table: pd.DataFrame,
    *,
    query: str = "",
    tags: list[str] | None = None,
    flags: str = "any",
    categories: list[str] | None = None,
    guides: list[str] | None = None,
) -> pd.DataFrame:
    """Rows matching every filter: `query` (atom ids like "12 56", or text found in tag, flags or top
    category), `tags`, `flags` ('any', 'flagged', 'not flagged' or a flag name), `categories`, `guides`."""
    keep = np.ones(len(table), dtype=bool)
    words = query.replace(",", " ").replace("#", " ").split()
    if words:
        ids = {int(w) for w in words if w.isdigit()}
        text = [w.lower() for w in words if not w.isdigit()]
        hay = (table["tag"] + " " + table["flags"] + " " + table["top_category"]).str.lower()
        by_id = table["atom"].isin(ids).to_numpy() if ids else np.zeros(len(table), dtype=bool)
        by_text = np.array([all(w in h for w in text) for h in hay]) if text else np.zeros(len(table), dtype=bool)
        keep &= by_id | by_text
    if tags:
        keep &= table["tag"].isin(tags).to_numpy()
    if flags == "flagged":
        keep &= (table["flags"] != "").to_numpy()
    elif flags == "not flagged":
        keep &= (table["flags"] == "").to_numpy()
    elif flags != "any":
        keep &= table["flags"].str.split(",").map(lambda f: flags in f).to_numpy()
    if categories:
        keep &= table["top_category"].isin(categories).to_numpy()
    if guides:
        keep &= table["guide"].isin(guides).to_numpy()
    return table[keep]
