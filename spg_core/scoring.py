"""From tokens and guide vectors to anomaly maps and image scores (SPG_METHOD.md, scoring).

    l = <f/|f|, g/|g|>                      cosine logits per patch
    p_a = softmax([l_n, l_a] / tau)[a]       anomaly probability per patch
    P = bilinear upsample of p_a to S x S    the anomaly map
    score = T log mean_u exp(P(u)/T)         log-sum-exp pooling (max as T -> 0, mean as T -> inf)

The official map (p_a + 1 - p_n) / 2 is the same map: with two classes p_n = 1 - p_a, and
bilinear upsampling is linear, so upsampling both channels and combining them gives P.

`cosine_logits` is the one cosine computation: scoring, guide training, atom attribution
(atoms/ranking.py) and ablation (atoms/ablation.py) all go through `unit` and
`atom_logit_weights`, so their logits agree by construction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# F.normalize's floor on a norm: the same in every cosine of the engine.
NORM_EPS = 1e-12


def unit(x: torch.Tensor) -> torch.Tensor:
    """`[..., D]` -> the same vectors at unit norm (float32)."""
    return F.normalize(x.float(), dim=-1, eps=NORM_EPS)


def cosine_logits(tokens: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
    """`[..., D]` tokens and one guide `[D]` -> `[...]` cosines, or guides `[G, D]` -> `[..., G]`."""
    return unit(tokens) @ unit(guides).t() if guides.ndim == 2 else unit(tokens) @ unit(guides)


def atom_logit_weights(dictionary: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Per-atom weights `[G, M]` of guides g = dictionary `[D, M]` @ c, for coefficients `[G, M]`:
    c / |g|, so that cosine_logits(tokens, g) = unit(tokens) @ dictionary @ weights.T, and
    each atom's share of a patch's logit is unit(f) . d_j * weight_j (exact decomposition)."""
    c = coefficients.float()
    norms = (dictionary.float() @ c.t()).norm(dim=0).clamp_min(NORM_EPS)  # [G]
    return c / norms[:, None]


def patch_probabilities(l_n: torch.Tensor, l_a: torch.Tensor, tau: float) -> torch.Tensor:
    """Two-class temperature softmax: `[B, N]` logits -> `[B, N]` anomaly probability."""
    return torch.sigmoid((l_a - l_n) / tau)  # == exp(l_a/t) / (exp(l_n/t) + exp(l_a/t))


def upsample(patch_maps: torch.Tensor, grid: tuple[int, int], size: int) -> torch.Tensor:
    """`[B, N]` patch values on a `grid = (h, w)` -> `[B, S, S]` bilinear (align_corners=False)."""
    h, w = grid
    x = patch_maps.reshape(-1, 1, h, w).float()
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def image_scores(maps: torch.Tensor, aggregation: str = "max", temperature: float = 0.1) -> torch.Tensor:
    """`[B, H, W]` maps -> `[B]` image scores by 'max', 'mean' or 'lse' (log-sum-exp, temperature T)."""
    flat = maps.reshape(maps.shape[0], -1).float()
    if aggregation == "max":
        return flat.max(dim=1).values
    if aggregation == "mean":
        return flat.mean(dim=1)
    if aggregation == "lse":
        if temperature <= 0:
            return flat.max(dim=1).values
        # T log mean exp(P/T) = max + T log1p(mean(expm1((P - max)/T))): exact in float64 at both
        # ends, where the textbook form loses the mean to cancellation for large T.
        x = flat.double()
        top = x.max(dim=1, keepdim=True).values
        y = torch.expm1((x - top) / temperature).mean(dim=1)
        return (top[:, 0] + temperature * torch.log1p(y)).to(flat.dtype)
    raise ValueError(f"unknown aggregation {aggregation!r}: use max, mean or lse")


def anomaly_maps(
    tokens: torch.Tensor, g_n: torch.Tensor, g_a: torch.Tensor, *, tau: float, grid: tuple[int, int], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, N, D]` tokens -> (patch probabilities `[B, N]`, maps `[B, S, S]`)."""
    logits = cosine_logits(tokens, torch.stack([g_n, g_a]))
    p = patch_probabilities(logits[..., 0], logits[..., 1], tau)
    return p, upsample(p, grid, size)


def cls_scores(cls: torch.Tensor, global_guides: torch.Tensor, tau: float) -> torch.Tensor:
    """CLS image score of the official global guides: `[B, D]` CLS tokens, guides `[2, D]`
    (normal, anomaly) -> `[B]` softmax(cos / tau)[anomaly], as the official pipeline score."""
    logits = cosine_logits(cls, global_guides)
    return patch_probabilities(logits[:, 0], logits[:, 1], tau)
