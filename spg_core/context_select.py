"""`spg select --context-grid`: the atom-space context's fusion (context.py) chosen on the auxiliary set.

For every fold of `spg select` (leave-categories-out, the target never opened), the held-out images
are scored by SPG + context for every (form, weight) of the grid from the fold's own SAE and guides
(`score_context`); `choose_context` then takes the chosen setting's fold means and picks the best by
the selection criterion, plain SPG (weight 0) included, so a context that does not help is not chosen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .config import ScoreConfig
from .context import FORMS, fuse
from .errors import SPGError
from .methods import METRICS, evaluate_patches, logits_and_context


def score_context(
    held_view: Any, sae: Any, guides: torch.Tensor, tau: float, context_grid: tuple[tuple[str, float], ...]
) -> list[dict[str, Any]]:
    """Held-out metrics of SPG + context for every (form, weight): one row each."""
    logits, context = logits_and_context(held_view, sae, guides, tau)
    rows = []
    for form, weight in context_grid:
        out = evaluate_patches(fuse(logits, context, form, weight), held_view, ScoreConfig())
        rows.append({"form": form, "weight": weight, **{m: float(out["mean"].get(m, float("nan"))) for m in METRICS}})
    return rows


def choose_context(
    mine: list[dict[str, Any]], context_grid: tuple[tuple[str, float], ...], criterion: tuple[str, ...]
) -> dict[str, Any]:
    """The context fusion, from the chosen setting's fold rows (`score_fold`'s, with "context"): fold
    means of plain SPG (weight 0) and of every (form, weight); the highest criterion is chosen (ties
    go to plain SPG, then to the earlier entry)."""
    options: list[tuple[str, float]] = [("logit", 0.0), *context_grid]
    summary = []
    for form, weight in options:
        per_fold = (
            list(mine)
            if weight == 0.0
            else [c for r in mine for c in r.get("context", []) if (c["form"], c["weight"]) == (form, weight)]
        )
        means = {m: float(np.nanmean([r[m] for r in per_fold])) for m in METRICS}
        summary.append(
            {"form": form, "weight": weight, **means, "criterion": float(np.mean([means[m] for m in criterion]))}
        )
    best = max(range(len(summary)), key=lambda i: (summary[i]["criterion"], -i))
    return {"grid": [list(c) for c in context_grid], "summary": summary, "chosen": summary[best], "helps": best > 0}


def parse_context_grid(text: str) -> tuple[tuple[str, float], ...]:
    """'logit:1,mix:0.5' -> (("logit", 1.0), ("mix", 0.5)); '' -> ()."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        form, _, weight = item.partition(":")
        try:
            w = float(weight)
        except ValueError:
            w = -1.0
        if form not in FORMS or w <= 0 or (form == "mix" and w > 1):
            raise SPGError(
                f"cannot read the context grid entry {item!r}",
                fix=f"give FORM:WEIGHT with FORM one of {', '.join(FORMS)} and WEIGHT above 0 (mix: at most 1)",
            )
        out.append((form, w))
    return tuple(out)
