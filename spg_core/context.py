"""Atom-space context beside SPG: how unlike a patch's SAE code is to the rest of its own image.

SPG's guides know what defects look like across categories; they do not know what is usual in
*this* image. The context term adds that, inductively (one image at a time, no other target
image read), in the SAE's atom space so that it stays explainable atom by atom:

    u_i = s_i / |s_i|                           unit SAE code of patch i (`[M]`, zero stays zero)
    j*(i) = argmax_{j outside i's 3 x 3} u_i . u_j      its closest look-alike elsewhere in the image
    c_i = |u_i|^2 - u_i . u_j*                  the context term (1 - best cosine; 0 for an empty code)
        = sum_m u_im (u_im - u_j*m)             exact decomposition over atoms m

Codes are ReLU'd (non-negative), so c_i lies in [0, 1]. Atom m's share is positive when it fires
more here than in the look-alike: "atom m fires here and almost nowhere else in this image".

Fusion with SPG's anomaly logit l_i = (cos_a - cos_n) / tau (scoring.py), form and weight w chosen
by `spg select` on the auxiliary set alone (select.py):

    logit   p_i = sigmoid(l_i + w c_i)          context shifts the logit
    mix     p_i = (1 - w) sigmoid(l_i) + w c_i  a convex mix of probability and context (w <= 1)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .atomic import read_json
from .baselines import neighbourhood_mask
from .config import ScoreConfig
from .errors import SPGError
from .protocols import OFFICIAL
from .sae import TopKSAE
from .scoring import NORM_EPS, cosine_logits

FORMS = ("logit", "mix")
NO_MATCH = -2.0  # below any cosine: excluded pairs never win the argmax


def unit_codes(codes: torch.Tensor) -> torch.Tensor:
    """`[..., N, M]` codes -> unit codes (float32); an all-zero code stays zero."""
    c = codes.float()
    return c / c.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def look_alikes(units: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[N, M]` unit codes of one image -> `[N]` index of each patch's most similar patch outside its
    3 x 3 neighbourhood (highest cosine; the first on ties)."""
    sim = (units @ units.t()).masked_fill(neighbourhood_mask(*grid).to(units.device), NO_MATCH)
    return sim.argmax(dim=-1)


def context_contributions(codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[N, M]` SAE codes of one image on a `grid = (h, w)` -> `[N, M]` each atom's share of the
    context term, u_im (u_im - u_j*m); summed over atoms it is `context_terms`."""
    u = unit_codes(codes)
    return u * (u - u[look_alikes(u, grid)])


def context_terms(codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[N, M]` SAE codes of one image -> `[N]` context terms c (1 - the best cosine to a code
    outside the 3 x 3 neighbourhood; 0 for a patch whose code is empty)."""
    u = unit_codes(codes)
    return (u * u).sum(-1) - (u * u[look_alikes(u, grid)]).sum(-1)


def fuse(logits: torch.Tensor, context: torch.Tensor, form: str, weight: float) -> torch.Tensor:
    """SPG anomaly logits `[B, N]` and context terms `[B, N]` -> fused patch probabilities `[B, N]`."""
    if form == "logit":
        return torch.sigmoid(logits + weight * context)
    if form == "mix":
        return (1 - weight) * torch.sigmoid(logits) + weight * context
    raise SPGError(f"unknown context form {form!r}", fix=f"use one of {', '.join(FORMS)}")


def image_codes(sae: TopKSAE, tokens: torch.Tensor) -> torch.Tensor:
    """`[N, D]` tokens of one image -> `[N, M]` dense SAE codes (float32)."""
    sae_dtype = sae.W_dec.dtype
    return sae.encode_dense(tokens.to(sae.W_dec.device, sae_dtype)).float()


@torch.no_grad()
def batch_context(sae: TopKSAE, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[B, N, D]` tokens -> `[B, N]` context terms, image by image (an `[N, N]` similarity each)."""
    return torch.stack([context_terms(image_codes(sae, t), grid).to(tokens.device) for t in tokens])


@dataclass
class ContextScorer:
    """The context term fused with SPG: the run's SAE, the fusion form and its weight."""

    sae: TopKSAE
    form: str
    weight: float

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, guides: torch.Tensor, tau: float, grid: tuple[int, int]) -> torch.Tensor:
        """`[B, N, D]` tokens, local guides `[2, D]` (normal, anomaly) -> fused probabilities `[B, N]`."""
        cos = cosine_logits(tokens, guides)
        return fuse((cos[..., 1] - cos[..., 0]) / tau, batch_context(self.sae, tokens, grid), self.form, self.weight)


def selected_context(path: str | Path) -> tuple[str, float]:
    """(form, weight) `spg select` chose, from its select.json."""
    data = read_json(Path(path), what="select.json of spg select")
    chosen = data.get("context", {}).get("chosen")
    if not chosen:
        raise SPGError(
            "this select.json holds no context choice",
            path=str(path),
            fix="re-run `spg select` with a --context-grid, or give --context-weight W",
        )
    return str(chosen["form"]), float(chosen["weight"])


def resolve_context(score: ScoreConfig, protocol: str) -> ScoreConfig:
    """The score settings with the context's form and weight filled in (from --context-select's
    select.json unless --context-weight is given); unchanged when the context is off."""
    if not score.context:
        return score
    if protocol == OFFICIAL:
        raise SPGError(
            "--context is not part of the official protocol (its maps stay the authors' maps)",
            fix="drop --context, or use a studio run",
        )
    if score.context_weight is not None:
        return score
    if score.context_select is None:
        raise SPGError(
            "--context needs a weight: none was chosen for this run",
            fix="give --context-select SELECT/select.json (from `spg select --context-grid ...`) or --context-weight W",
        )
    form, weight = selected_context(score.context_select)
    return replace(score, context_form=form, context_weight=weight)


def with_overrides(score: ScoreConfig, given: dict) -> ScoreConfig:
    """A run's score settings with the command line's on top; a new --context-select without
    --context-weight drops the run's recorded weight, so the new selection's is read."""
    if given.get("context_select") is not None and given.get("context_weight") is None:
        given = {**given, "context_weight": None}
    return replace(score, **given)


def context_scorer(score: ScoreConfig, sae: TopKSAE | None) -> ContextScorer | None:
    """The run's ContextScorer, or None when the context is off (plain SPG)."""
    if not score.context:
        return None
    if sae is None:
        raise SPGError(
            "--context needs an SAE (atom codes); free-guide runs have none", fix="drop --context for this run"
        )
    if score.context_weight is None:
        raise SPGError("--context without a weight", fix="give --context-weight W or --context-select FILE")
    if score.context_form == "mix" and score.context_weight > 1:
        raise SPGError(
            f"--context-form mix needs a weight in [0, 1], got {score.context_weight}", fix="give --context-weight <= 1"
        )
    return ContextScorer(sae, score.context_form, float(score.context_weight))


def context_words(atom: int, elsewhere: int, others: int) -> str:
    """Plain words for an atom's share of the context: where else in the image it fires."""
    if elsewhere == 0:
        return f"atom {atom} fires here and nowhere else in this image"
    if elsewhere <= max(1, others // 50):
        return f"atom {atom} fires here and almost nowhere else in this image ({elsewhere} of {others} other patches)"
    return (
        f"atom {atom} fires here more than in this patch's closest look-alike ({elsewhere} of {others} other patches)"
    )


def region_context(codes: torch.Tensor, grid: tuple[int, int], region: torch.Tensor, k: int = 6) -> dict:
    """The context of a region of one image, atom by atom: SAE codes `[N, M]`, the region `[N]` bool.

    Returns {"context": the region's mean context term, "atoms": up to `k` rows (largest share first)
    of {"atom", "share" (mean share of the context over the region; the shares of all atoms sum to
    "context"), "elsewhere" (patches outside the region where the atom fires), "words"}}."""
    region = torch.as_tensor(region, dtype=torch.bool)
    parts = context_contributions(codes, grid)[region].mean(0)  # [M]
    elsewhere = (codes[~region] > 0).sum(0)  # [M]
    others = int((~region).sum())
    top = parts.topk(min(k, parts.numel()))
    rows = [
        {
            "atom": int(a),
            "share": float(v),
            "elsewhere": int(elsewhere[a]),
            "words": context_words(int(a), int(elsewhere[a]), others),
        }
        for v, a in zip(top.values, top.indices)
        if v > 0
    ]
    return {"context": float(parts.sum()), "atoms": rows}
