"""Zero-training baselines: what a backbone's tokens give with no SAE and no guides at all.

Reported beside every SPG figure on synthetic data, so a reader sees what SPG adds.

- `joint-channel` (builtin only): token channel 1, builtin's joint evidence, as the patch
  score; its max per image as the image score.
- `self-nn` (any backbone): each patch's cosine distance to its nearest patch in the same
  image outside its 3 x 3 neighbourhood (a defect has few look-alikes in its own image,
  texture and repeated parts many); the max per image as the image score. Zero-shot and
  training-free, in the spirit of AnomalyDINO's / MuSc's nearest-neighbour scoring, but
  within one image, so it needs no reference images.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .metrics import evaluate
from .scoring import upsample

BASELINES = ("joint-channel", "self-nn")
JOINT_CHANNEL = 1  # builtin's token layout: [1 | joint | descriptors]


def neighbourhood_mask(h: int, w: int) -> torch.Tensor:
    """`[N, N]` True where two patches are within one patch of each other (self included)."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    return ((y[:, None] - y[None, :]).abs() <= 1) & ((x[:, None] - x[None, :]).abs() <= 1)


def self_nn_scores(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[B, N, D]` -> `[B, N]`: 1 - the best cosine similarity to a patch outside the 3 x 3 neighbourhood."""
    unit = F.normalize(tokens.float(), dim=-1)
    sim = unit @ unit.transpose(1, 2)  # [B, N, N]
    sim = sim.masked_fill(neighbourhood_mask(*grid).to(sim.device), -2.0)
    return 1 - sim.max(-1).values


def patch_scores(tokens: torch.Tensor, grid: tuple[int, int], kind: str) -> torch.Tensor:
    """`[B, N, D]` -> `[B, N]` patch anomaly scores of baseline `kind`."""
    if kind == "joint-channel":
        return tokens[..., JOINT_CHANNEL].float()
    if kind == "self-nn":
        return self_nn_scores(tokens, grid)
    raise ValueError(f"unknown baseline {kind!r}; use one of {BASELINES}")


def default_baseline(backbone_name: str) -> str:
    return "joint-channel" if backbone_name == "builtin" else "self-nn"


def evaluate_baseline(store: Any, kind: str, batch_images: int = 32) -> dict[str, Any]:
    """Metrics (`metrics.evaluate`) of baseline `kind` on every image of a token store."""
    patches = torch.cat(
        [
            patch_scores(store.tokens(list(range(i, min(i + batch_images, store.num_images)))), store.grid, kind)
            for i in range(0, store.num_images, batch_images)
        ]
    )
    maps = torch.cat(
        [upsample(patches[i : i + 64], store.grid, store.image_size).float() for i in range(0, patches.shape[0], 64)]
    )
    masks = store.masks(range(store.num_images)).to(torch.uint8)
    return evaluate(
        patches.max(1).values.numpy(),
        store.labels(),
        maps.numpy(),
        masks.numpy(),
        [r["category"] for r in store.images],
    )
