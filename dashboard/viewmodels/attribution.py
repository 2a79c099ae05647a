"""Per-atom contributions as tables: one patch's atoms, one image's atoms, and the guides' atom table."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from spg_core.atoms import top_atoms_per_image
from spg_core.atoms.flags import flag_mark


def guide_of(atom: int, in_a: set[int], in_n: set[int]) -> str:
    """'anomaly', 'normal' or 'both': which guide(s) weight `atom`."""
    return "both" if atom in in_a and atom in in_n else ("anomaly" if atom in in_a else "normal")


def patch_contributions(
    attr: Any, patch: int, k: int = 6, image: int = 0, tags: dict[int, str] | None = None
) -> pd.DataFrame:
    """The atoms that push one patch most towards 'anomalous' and most towards 'normal'.

    `attr` is a `spg_core.atoms.Attribution`; contributions are to l_a - l_n (what the patch's
    probability depends on). Rows: atom, guide ('anomaly', 'normal' or 'both'), contribution,
    tag; the k largest positive first, then the k most negative.
    """
    atoms, net = attr.net()
    values = net[image, patch].detach().cpu().numpy()
    ids = atoms.cpu().numpy()
    in_a = set(attr.atoms_a.cpu().tolist())
    in_n = set(attr.atoms_n.cpu().tolist())
    order = np.argsort(-values, kind="stable")
    pos = [i for i in order[:k] if values[i] > 0]
    neg = [i for i in order[::-1][:k] if values[i] < 0]
    rows = []
    for i in pos + neg:
        j = int(ids[i])
        rows.append(
            {
                "atom": j,
                "guide": guide_of(j, in_a, in_n),
                "contribution": float(values[i]),
                "tag": (tags or {}).get(j, ""),
            }
        )
    return pd.DataFrame(rows, columns=["atom", "guide", "contribution", "tag"])


def image_top_atoms(attr: Any, k: int = 6, image: int = 0, tags: dict[int, str] | None = None) -> pd.DataFrame:
    """The atoms that contribute most to one image's anomalous patches (`atoms.top_atoms_per_image`,
    net of the normal guide), as rows: atom, guide, contribution, tag."""
    ids, values = top_atoms_per_image(attr, "net", k=k)
    in_a = set(attr.atoms_a.cpu().tolist())
    in_n = set(attr.atoms_n.cpu().tolist())
    rows = [
        {
            "atom": int(j),
            "guide": guide_of(int(j), in_a, in_n),
            "contribution": float(v),
            "tag": (tags or {}).get(int(j), ""),
        }
        for j, v in zip(ids[image].tolist(), values[image].tolist())
    ]
    return pd.DataFrame(rows, columns=["atom", "guide", "contribution", "tag"])


def dead_atoms(stats: pd.DataFrame | None) -> set[int]:
    """Atoms tagged 'dead' (never fire on the auxiliary set) in an atom statistics table."""
    if stats is None or "tag" not in getattr(stats, "columns", []):
        return set()
    ids = stats["atom"] if "atom" in stats.columns else stats.index
    return {int(a) for a, t in zip(ids, stats["tag"]) if t == "dead"}


def live_ranking(ranking: dict[str, list[dict[str, Any]]], dead: set[int]) -> dict[str, list[dict[str, Any]]]:
    """`atoms.rank_atoms` output without dead atoms (older runs' guides may still weight them)."""
    return {g: [e for e in entries if int(e["atom"]) not in dead] for g, entries in ranking.items()}


TABLE_COLUMNS = (
    "guide",
    "rank",
    "atom",
    "tag",
    "share",
    "coef",
    "frequency",
    "lift",
    "top_category",
    "top_category_share",
    "dominant_defect",
    "mean_activation",
    "max_activation",
    "selectivity",
)


def atom_table(ranking: dict[str, list[dict[str, Any]]], stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Both guides' active atoms (from `atoms.rank_atoms`) as one table, joined with atom statistics.

    Columns: guide, rank (1 = largest coefficient), atom, coef, share (% of the guide), then the
    readable columns of `stats` (TABLE_COLUMNS; frequency, top_category_share and selectivity in %).
    Text cells without a value are empty strings, never None.
    """
    rows = [
        {"guide": guide, "rank": i + 1, **entry}
        for guide, entries in ranking.items()
        for i, entry in enumerate(entries)
    ]
    table = pd.DataFrame(rows, columns=["guide", "rank", "atom", "coef", "share"])
    table["share"] = 100.0 * table["share"]
    if stats is not None and len(stats):
        extra = stats.reset_index() if "atom" not in stats.columns else stats
        extra = extra.rename(columns={"index": "atom"}) if "atom" not in extra.columns else extra
        keep = [c for c in TABLE_COLUMNS if c in extra.columns and c not in ("guide", "rank", "coef", "share")]
        table = table.merge(extra[keep], on="atom", how="left")
        for col in ("frequency", "top_category_share", "selectivity"):
            if col in table.columns:
                table[col] = 100.0 * table[col].astype(float)
        if "flags" in extra.columns:  # a flagged atom's tag carries its mark, as in every other table
            marks = dict(zip(extra["atom"].astype(int), extra["flags"].map(flag_mark)))
            table["tag"] = [f"{t}{marks.get(int(a), '')}" for a, t in zip(table["atom"], table["tag"])]
    for col in table.columns:
        if table[col].dtype == object:
            table[col] = table[col].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else v)
    return table[[c for c in TABLE_COLUMNS if c in table.columns]]


def atom_table_columns() -> dict[str, dict[str, Any]]:
    """Header, unit and number format of each atom_table column (for st.column_config)."""
    return {
        "rank": {"label": "rank", "format": "%d"},
        "atom": {"label": "atom", "format": "#%d"},
        "share": {"label": "share of guide (%)", "format": "%.1f"},
        "coef": {"label": "coefficient", "format": "%.4f"},
        "frequency": {"label": "fires on (% of aux patches)", "format": "%.3g"},
        "lift": {"label": "in-defect lift (x base rate)", "format": "%.2f"},
        "top_category_share": {"label": "top category share (%)", "format": "%.0f"},
        "mean_activation": {"label": "mean activation", "format": "%.3f"},
        "max_activation": {"label": "max activation", "format": "%.3f"},
        "selectivity": {"label": "activation in defects (%)", "format": "%.1f"},
    }
