"""Per-atom statistics over the auxiliary set, and the class-general / class-specific tag.

Columns of `atom_stats` (one row per atom; NaN where an atom never fires):

    frequency            share of auxiliary tokens where s_j > 0
    mean_activation      mean s_j over the tokens where it fires
    max_activation       largest s_j (the index's first entry)
    selectivity          share of its activation mass inside defect masks:
                         sum_t s_j(t) m(t) / sum_t s_j(t), m(t) = patch's mask fraction
    lift                 selectivity / base rate (the auxiliary set's mean mask fraction)
    category_entropy     entropy of its category profile, divided by log(C), in [0, 1];
                         the profile is the mean activation per auxiliary category,
                         normalised to sum 1 (so big categories do not weigh more)
    top_category, top_category_share     the profile's largest entry
    top_patch_entropy, n_top_categories  the same over the categories of its top-P patches
    in_mask_top          how many of its top-P patches overlap a defect mask
    dominant_defect, dominant_defect_share, n_defect_categories
                         defect kinds among those in-mask top patches, and in how many
                         categories they lie ("scratches across 3 categories")
    tag                  see TAG_RULE
and, in stats.json only, the dicts top_categories {cat: n}, top_defects {kind: n},
defect_categories {kind: [cat, ...]}.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..atomic import read_json, write_json, write_text
from ..errors import SPGError
from .index import AtomIndex

SPECIFIC_SHARE = 0.5
MIN_LIFT = 2.0
TAG_RULE = (
    "dead: never fires on the auxiliary set. "
    f"class-specific: at least {SPECIFIC_SHARE:.0%} of its category profile (mean activation per auxiliary "
    "category, normalised) lies in one category: it fires on one category's parts or surfaces. "
    f"class-general: spread over categories (not class-specific) and anomaly-selective: the share of its "
    f"activation mass inside defect masks is at least {MIN_LIFT:g}x the auxiliary base rate. "
    "shared: spread over categories but not anomaly-selective (surfaces, edges, background common to many "
    "categories). With a single auxiliary category every live atom is class-specific."
)
TAGS = ("class-general", "class-specific", "shared", "dead")
OBJECT_COLUMNS = ("top_categories", "top_defects", "defect_categories")
FLOAT_COLUMNS = (
    "frequency",
    "mean_activation",
    "max_activation",
    "selectivity",
    "lift",
    "category_entropy",
    "top_category_share",
    "top_patch_entropy",
    "dominant_defect_share",
)
FLAG_COLUMNS = ("border_share", "position_share", "image_share", "pixel_std")  # flags.py's, written by build.with_flags


def _normalised_entropy(p: np.ndarray) -> np.ndarray:
    """Rows of a `[M, C]` distribution -> entropy / log(C) in [0, 1] (0 when C == 1)."""
    c = p.shape[1]
    if c < 2:
        return np.zeros(p.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return np.clip(h / math.log(c), 0.0, 1.0)


def _category_profile(index: AtomIndex) -> np.ndarray:
    """`[M, C]` mean activation per category, normalised per atom (NaN rows for dead atoms)."""
    mass = index.counts.category_mass.numpy()
    tokens = index.counts.category_tokens.numpy().astype(np.float64)
    mean = mass / np.maximum(tokens, 1)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return mean / mean.sum(axis=1, keepdims=True)


def _top_patch_row(entries: list[dict[str, Any]], records: list[dict[str, Any]], num_categories: int) -> dict:
    """What one atom's top-P patches are: their categories, and the defect kinds of the in-mask ones."""
    cats = Counter(records[e["image"]]["category"] for e in entries)
    in_mask = [records[e["image"]] for e in entries if e["mask_fraction"] > 0]
    defects = Counter(r["defect"] for r in in_mask)
    kinds: dict[str, set[str]] = {}
    for r in in_mask:
        kinds.setdefault(r["defect"], set()).add(r["category"])
    share = np.zeros((1, max(num_categories, len(cats))))
    share[0, : len(cats)] = list(cats.values())
    top_defect = defects.most_common(1)
    return {
        "top_patch_entropy": float(_normalised_entropy(share / share.sum())[0]) if entries else math.nan,
        "n_top_categories": len(cats),
        "in_mask_top": len(in_mask),
        "dominant_defect": top_defect[0][0] if top_defect else None,
        "dominant_defect_share": top_defect[0][1] / len(in_mask) if top_defect else math.nan,
        "n_defect_categories": len({r["category"] for r in in_mask}),
        "top_categories": dict(cats.most_common()),
        "top_defects": dict(defects.most_common()),
        "defect_categories": {k: sorted(v) for k, v in sorted(kinds.items())},
    }


def tag_atoms(df: pd.DataFrame, *, specific_share: float = SPECIFIC_SHARE, min_lift: float = MIN_LIFT) -> pd.Series:
    """The TAG_RULE applied to `atom_stats` columns (frequency, top_category_share, lift)."""
    dead = df["frequency"].to_numpy() == 0
    specific = df["top_category_share"].to_numpy() >= specific_share
    general = df["lift"].fillna(0).to_numpy() >= min_lift
    return pd.Series(
        np.select([dead, specific, general], ["dead", "class-specific", "class-general"], "shared"),
        index=df.index,
        name="tag",
    )


def atom_stats(
    index: AtomIndex,
    records: list[dict[str, Any]],
    *,
    specific_share: float = SPECIFIC_SHARE,
    min_lift: float = MIN_LIFT,
) -> pd.DataFrame:
    """One row per atom (see the module docstring). `records`: the auxiliary store's `images`."""
    c = index.counts
    names = list(index.meta.get("categories") or sorted({r["category"] for r in records}))
    fire = c.fire_count.numpy().astype(np.float64)
    act = c.act_sum.numpy()
    base_rate = c.mask_total / max(c.num_tokens, 1)
    profile = np.nan_to_num(_category_profile(index))  # dead atoms: all-zero rows
    live = fire > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        selectivity = np.where(live, c.masked_sum.numpy() / act, np.nan)
        df = pd.DataFrame(
            {
                "atom": np.arange(index.width),
                "frequency": fire / max(c.num_tokens, 1),
                "mean_activation": np.where(live, act / fire, np.nan),
                "max_activation": index.values[:, 0].numpy().astype(np.float64),
                "selectivity": np.clip(selectivity, 0.0, 1.0),
                "lift": selectivity / base_rate if base_rate > 0 else np.nan,
                "category_entropy": np.where(live, _normalised_entropy(profile), np.nan),
                "top_category": [names[i] if ok else None for i, ok in zip(profile.argmax(1), live)],
                "top_category_share": np.where(live, profile.max(1), np.nan),
            }
        )
    top = pd.DataFrame([_top_patch_row(index.entries(j), records, len(names)) for j in range(index.width)])
    df = pd.concat([df, top], axis=1)
    df["tag"] = tag_atoms(df, specific_share=specific_share, min_lift=min_lift)
    df.attrs.update(
        {
            "base_rate": base_rate,
            "categories": names,
            "rule": TAG_RULE,
            "thresholds": {"specific_share": specific_share, "min_lift": min_lift},
        }
    )
    return df


# -- persistence -------------------------------------------------------------------------------


def save_stats(df: pd.DataFrame, json_path: str | Path, csv_path: str | Path) -> None:
    """stats.json (settings + every column, NaN as null) and stats.csv (the scalar columns)."""
    atoms = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    write_json(json_path, {"version": 1, **df.attrs, "atoms": atoms})
    buf = io.StringIO()
    df.drop(columns=list(OBJECT_COLUMNS)).to_csv(buf, index=False, quoting=csv.QUOTE_MINIMAL)
    write_text(csv_path, buf.getvalue())


def load_stats(json_path: str | Path) -> pd.DataFrame:
    """The DataFrame `save_stats` wrote (settings in `.attrs`); SPGError when missing or damaged."""
    fix = "rebuild it with `spg atoms --run DIR`"
    try:
        data = read_json(json_path, what="atom statistics")
    except SPGError as exc:
        raise SPGError(str(exc).split("\n")[0], path=str(json_path), fix=fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("atoms"), list):
        raise SPGError("atom statistics lack the per-atom table", path=str(json_path), fix=fix)
    df = pd.DataFrame.from_records(data.pop("atoms"))
    floats = [*FLOAT_COLUMNS, *(c for c in FLAG_COLUMNS if c in df.columns)]
    df[floats] = df[floats].astype(np.float64)  # JSON null -> NaN
    df.attrs.update({k: v for k, v in data.items() if k != "version"})
    return df
