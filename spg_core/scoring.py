"""From tokens and guide vectors to anomaly maps and image scores (SPG_METHOD.md, scoring).

    l = <f/|f|, g/|g|>                      cosine logits per patch
    p_a = softmax([l_n, l_a] / tau)[a]       anomaly probability per patch
    P = bilinear upsample of p_a to S x S    the anomaly map
    score = T log mean_u exp(P(u)/T)         log-sum-exp pooling (max as T -> 0, mean as T -> inf)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(tokens: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """`[B, N, D]` tokens, `[D]` guide -> `[B, N]` cosine similarities."""
    f = F.normalize(tokens.float(), dim=-1)
    g = F.normalize(guide.float(), dim=0)
    return f @ g


def patch_probabilities(l_n: torch.Tensor, l_a: torch.Tensor, tau: float) -> torch.Tensor:
    """Two-class temperature softmax: `[B, N]` logits -> `[B, N]` anomaly probability."""
    return torch.sigmoid((l_a - l_n) / tau)      # == exp(l_a/t) / (exp(l_n/t) + exp(l_a/t))


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


def anomaly_maps(tokens: torch.Tensor, g_n: torch.Tensor, g_a: torch.Tensor, *, tau: float,
                 grid: tuple[int, int], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, N, D]` tokens -> (patch probabilities `[B, N]`, maps `[B, S, S]`)."""
    p = patch_probabilities(cosine_logits(tokens, g_n), cosine_logits(tokens, g_a), tau)
    return p, upsample(p, grid, size)
