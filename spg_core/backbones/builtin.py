"""`builtin`: a weight-free backbone, so the demo and the tests run anywhere with no download.

It is not a neural network; it is a fixed, documented feature extractor whose
tokens carry what a zero-shot detector needs and nothing category-specific is
learned:

1. Pixel channels: opponent colour (L, a, b), Sobel gradient magnitude,
   |Laplacian| and a difference of Gaussians of L.
2. Patch descriptors on an 8-px grid (32 x 32 at 256 px): per-patch means and
   standard deviations of those channels, plus the same averaged over the 3 x 3
   neighbouring patches (context).
3. Self-similarity (the zero-shot cue AnomalyDINO uses with DINOv2 features,
   here within one image): for each patch, the distance to its k-th nearest
   patch elsewhere in the same image (its 3 x 3 neighbourhood excluded), for
   k in (1, 3, 10, 30, 100) and three descriptor groups, divided by the image's
   median of that distance. Texture repeats and objects have many look-alike
   patches; a defect has few, and how few tells its size.
4. Robustly standardised descriptors (per image: minus median, over MAD),
   scaled down so that they shape but do not dominate a token's direction.
5. A constant channel, so a perfectly ordinary patch still has a direction
   (cosine scoring needs one).

Token = [1 | self-similarity (15) | |z| (10) | z (20)], D = 46.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Backbone

_K_NEIGHBOURS = (1, 3, 10, 30, 100)
_Z_SCALE = 0.15
_MAD_FLOOR = 0.02


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `[B, C, H, W]` with reflect padding."""
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k, groups=x.shape[1])
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.transpose(-1, -2), groups=x.shape[1])


def pixel_channels(images: torch.Tensor) -> torch.Tensor:
    """`[B, 3, S, S]` RGB in [0, 1] -> `[B, 6, S, S]`: L, a, b, |grad L|, |lap L|, |DoG L|."""
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    lum = (r + g + b) / 3
    opp_a = r - g
    opp_b = (r + g) / 2 - b
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 4
    padded = F.pad(lum, (1, 1, 1, 1), mode="reflect")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3))
    grad = torch.sqrt(gx ** 2 + gy ** 2 + 1e-8)
    lap_k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device)
    lap = F.conv2d(padded, lap_k.view(1, 1, 3, 3)).abs()
    dog = (lum - _gaussian_blur(lum, 3.0)).abs()
    return torch.cat([lum, opp_a, opp_b, grad, lap, dog], dim=1)


def patch_descriptors(channels: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, 6, S, S]` -> `[B, 10, h, w]`: means of the 6 channels, std of L, a, b, |grad|."""
    mean = F.avg_pool2d(channels, patch)
    sq = F.avg_pool2d(channels[:, :4] ** 2, patch)
    std = (sq - mean[:, :4] ** 2).clamp_min(0).sqrt()
    return torch.cat([mean, std], dim=1)


def robust_standardise(desc: torch.Tensor) -> torch.Tensor:
    """Per image and channel: (x - median) / (MAD + floor). `[B, C, N]` -> same."""
    med = desc.median(dim=-1, keepdim=True).values
    mad = (desc - med).abs().median(dim=-1, keepdim=True).values
    return (desc - med) / (mad + _MAD_FLOOR)


def _neighbourhood_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    """`[N, N]` True where two patches are within one patch of each other (self included)."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    return ((y[:, None] - y[None, :]).abs() <= 1) & ((x[:, None] - x[None, :]).abs() <= 1)


def self_similarity(z: torch.Tensor, near: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """k-th nearest-neighbour distances within each image, median-normalised.

    `z`: `[B, N, C]` standardised descriptors; `near`: `[N, N]` excluded pairs.
    Returns `[B, N, len(ks)]`: log1p(max(d_k / median(d_k) - 1, 0)).
    """
    dist = torch.cdist(z, z)                                     # [B, N, N]
    dist = dist.masked_fill(near, float("inf"))
    kmax = min(max(ks), dist.shape[-1] - int(near[0].sum()))
    nearest = dist.topk(kmax, dim=-1, largest=False).values      # [B, N, kmax], ascending
    picked = nearest[..., [min(k, kmax) - 1 for k in ks]]        # [B, N, len(ks)]
    med = picked.median(dim=1, keepdim=True).values
    ratio = picked / (med + 1e-3)
    return torch.log1p((ratio - 1).clamp_min(0))


class BuiltinBackbone(Backbone):
    """Weight-free self-similarity features; see the module docstring. 256 px, 8-px patches."""

    name = "builtin"
    image_size = 256
    patch_size = 8
    dim = 46
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    weights = "builtin-v1"

    def __init__(self) -> None:
        super().__init__()
        h, w = self.grid
        # A parameter-free module still needs a device anchor for `.to()` and store extraction.
        self.register_buffer("_near", _neighbourhood_mask(h, w, torch.device("cpu")), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 256, 256]` in [0, 1] -> `[B, 1024, 46]` tokens."""
        # Medians and nearest-neighbour ranks are precision-sensitive and cheap: always fp32.
        with torch.autocast(images.device.type, enabled=False):
            return self._tokens(images.float())

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        desc = patch_descriptors(pixel_channels(images), self.patch_size)          # [B, 10, h, w]
        context = F.avg_pool2d(desc, 3, stride=1, padding=1, count_include_pad=False)
        z_local = robust_standardise(desc.flatten(2))                              # [B, 10, N]
        z_ctx = robust_standardise(context.flatten(2))
        colour = z_local[:, [0, 1, 2, 6, 7, 8]].transpose(1, 2)                    # [B, N, 6]
        structure = z_local[:, [3, 4, 5, 9]].transpose(1, 2)                       # [B, N, 4]
        ctx = z_ctx.transpose(1, 2)                                                # [B, N, 10]
        near = self._near
        sim = torch.cat([self_similarity(g, near, _K_NEIGHBOURS) for g in (colour, structure, ctx)], dim=-1)
        z = torch.cat([z_local, z_ctx], dim=1).transpose(1, 2).clamp(-20, 20) * _Z_SCALE
        ones = torch.ones_like(sim[..., :1])
        return torch.cat([ones, sim, z[..., :10].abs(), z], dim=-1)
