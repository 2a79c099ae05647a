"""The atom x defect-kind heatmap's rows: which atoms to show, in which order, a page at a time (no Streamlit)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

# Row orders of the heatmap: (caption, sort columns, ascending). The captions say what comes first.
SORTS: dict[str, tuple[list[str], bool]] = {
    "categories spanned (class-general first)": (["categories", "peak"], False),
    "peak activation (strongest first)": (["peak"], False),
    "atom id": (["atom"], True),
}
PER_PAGE = 30  # rows a page shows: each row stays readable at the projector's font size


def kind_table(km: Any, tags: dict[int, str]) -> pd.DataFrame:
    """One row per atom of an atoms.kinds.KindMap: atom, tag, categories spanned, strongest kind, peak (its
    largest mean in-defect activation) and `row`, its row in `km.mean` `[A, K]`."""
    best = km.mean.argmax(axis=1)
    return pd.DataFrame(
        {
            "atom": km.atoms.astype(int),
            "tag": [tags.get(int(a), "") for a in km.atoms],
            "categories": km.categories_spanned(),
            "top_kind": [" / ".join(km.kinds[i]) for i in best],
            "peak": km.mean.max(axis=1),
            "row": np.arange(len(km.atoms)),
        }
    )


def relevant_rows(table: pd.DataFrame, sort: str, page: int = 0, per_page: int = PER_PAGE) -> pd.DataFrame:
    """Page `page` of the atoms ranked by relevance (peak in-defect activation; atoms that never fire in a
    defect are left out), shown in the order `sort` (a key of SORTS)."""
    ranked = table[table["peak"] > 0].sort_values("peak", ascending=False, kind="stable")
    chunk = ranked.iloc[page * per_page : (page + 1) * per_page]
    columns, ascending = SORTS[sort]
    return chunk.sort_values(columns, ascending=ascending, kind="stable")


def page_count(table: pd.DataFrame, per_page: int = PER_PAGE) -> int:
    """Pages of relevant atoms (at least one, so the pager always has a value)."""
    return max(1, -(-int((table["peak"] > 0).sum()) // per_page))
