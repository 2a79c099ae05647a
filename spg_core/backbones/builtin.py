"""`builtin`: a weight-free backbone, so the demo and the tests run anywhere with no download.

It is not a neural network; it is a fixed, documented, per-image feature
extractor (no learned weights, no randomness). Nothing category-specific is
built in: what makes a patch anomalous is learned by the SPG guides from the
auxiliary set, on top of these tokens.

1. Pixel channels (10): opponent colour L, a = R - G, b = (R + G)/2 - B; the
   gradient magnitude of L (central differences after a sigma-1 blur); and a
   band-pass pyramid of L (L - G1, G1 - G2, G2 - G4, G_s a Gaussian blur of
   sigma s) split into its positive (bright detail) and negative (dark detail)
   parts. The band-pass parts tell thin lines and small pits/particles (most
   defects) from smooth shading, and their sign tells dark from bright.
2. Patch descriptors (19) on an 8-px grid (32 x 32 at 256 px): per-patch means
   of the 10 channels, standard deviations of L, a, b, and the per-patch MAXIMA
   of the 6 band-pass parts. A defect a few pixels wide is diluted in an 8-px
   mean; its maximum is not.
3. Context (19): the same descriptors averaged over the 3 x 3 neighbouring patches.
4. Robust per-image standardisation of 2-3: (x - median) / (MAD + 0.02),
   clamped to +-20.
5. Self-similarity (12), the zero-shot cue AnomalyDINO uses with DINOv2
   features, here within one image: for each patch, the distance to its k-th
   nearest patch elsewhere in the image (its 3 x 3 neighbourhood excluded),
   k in (1, 3, 10, 30), for three descriptor groups (colour, structure,
   context), as log1p(max(d_k / median_image(d_k) - 1, 0)). Texture repeats and
   object outlines (the descriptors are rotation invariant) have many
   look-alikes; a defect has few. k stops at 30 (v1 went to 100): an object's
   body covers fewer than 100 patches, so large k flagged whole objects.
6. The standardised descriptors, scaled by 0.05 so they shape but do not
   dominate a token's direction, and their absolute values (local part only).
7. A constant channel, so a perfectly ordinary patch still has a direction
   (cosine scoring needs one).

Token = [1 | self-similarity (12) | |z_local| (19) | z_local (19) | z_context (19)], D = 70.

Known limits (measured, see the report that introduced v2): thin-line defects
(scratch, crack) and chunks missing at an object's outline are the weakest
kinds; unique normal parts of objects (a printed mark, pill dots, plug pins)
still score like small defects, which caps image AUROC on objects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Backbone

_K_NEIGHBOURS = (1, 3, 10, 30)
_BANDPASS_SIGMAS = (1.0, 2.0, 4.0)   # L - G1, G1 - G2, G2 - G4
_Z_SCALE = 0.05
_Z_CLAMP = 20.0
_MAD_FLOOR = 0.02

# Patch-descriptor layout (see patch_descriptors): indices into the 19 local descriptors.
_COLOUR = [0, 1, 2, 10, 11, 12]                          # means and stds of L, a, b
_STRUCTURE = [3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18]  # |grad| mean, band-pass means and maxima
_N_DESC = 19


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
    """`[B, 3, S, S]` RGB in [0, 1] -> `[B, 10, S, S]`.

    Channels: L, a, b, |grad L|, then (bright, dark) parts of L - G1, G1 - G2, G2 - G4.
    """
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    lum = (r + g + b) / 3
    blurred = [lum] + [_gaussian_blur(lum, s) for s in _BANDPASS_SIGMAS]     # L, G1, G2, G4
    # Gradient on the sigma-1 blur: sensor noise would otherwise dominate plain surfaces.
    p = F.pad(blurred[1], (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    grad = torch.sqrt(gx ** 2 + gy ** 2 + 1e-8)
    bands = []
    for fine, coarse in zip(blurred[:-1], blurred[1:]):
        d = fine - coarse
        bands += [d.clamp_min(0), (-d).clamp_min(0)]                         # bright, dark detail
    return torch.cat([lum, r - g, (r + g) / 2 - b, grad, *bands], dim=1)


def patch_descriptors(channels: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, 10, S, S]` -> `[B, 19, h, w]`: means of the 10 channels, stds of L, a, b,
    maxima of the 6 band-pass parts."""
    mean = F.avg_pool2d(channels, patch)
    sq = F.avg_pool2d(channels[:, :3] ** 2, patch)
    std = (sq - mean[:, :3] ** 2).clamp_min(0).sqrt()
    peak = F.max_pool2d(channels[:, 4:], patch)
    return torch.cat([mean, std, peak], dim=1)


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
    # Direct differences, not the matmul expansion: that one loses precision for near
    # neighbours and made CUDA and CPU tokens disagree (seen on an H100).
    dist = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")   # [B, N, N]
    dist = dist.masked_fill(near, float("inf"))
    kmax = min(max(ks), dist.shape[-1] - int(near[0].sum()))
    nearest = dist.topk(kmax, dim=-1, largest=False).values      # [B, N, kmax], ascending
    picked = nearest[..., [min(k, kmax) - 1 for k in ks]]        # [B, N, len(ks)]
    med = picked.median(dim=1, keepdim=True).values
    ratio = picked / (med + 1e-3)
    return torch.log1p((ratio - 1).clamp_min(0))


class BuiltinBackbone(Backbone):
    """Weight-free band-pass + self-similarity features; see the module docstring. 256 px, 8-px patches."""

    name = "builtin"
    image_size = 256
    patch_size = 8
    dim = 1 + 3 * len(_K_NEIGHBOURS) + 3 * _N_DESC      # 70
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    weights = "builtin-v2"

    def __init__(self) -> None:
        super().__init__()
        h, w = self.grid
        # A parameter-free module still needs a device anchor for `.to()` and store extraction.
        self.register_buffer("_near", _neighbourhood_mask(h, w, torch.device("cpu")), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 256, 256]` in [0, 1] -> `[B, 1024, 70]` tokens."""
        # Medians and nearest-neighbour ranks are precision-sensitive and cheap: always fp32.
        with torch.autocast(images.device.type, enabled=False):
            return self._tokens(images.float())

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        desc = patch_descriptors(pixel_channels(images), self.patch_size)          # [B, 19, h, w]
        context = F.avg_pool2d(desc, 3, stride=1, padding=1, count_include_pad=False)
        z_local = robust_standardise(desc.flatten(2)).clamp(-_Z_CLAMP, _Z_CLAMP).transpose(1, 2)   # [B, N, 19]
        z_ctx = robust_standardise(context.flatten(2)).clamp(-_Z_CLAMP, _Z_CLAMP).transpose(1, 2)
        groups = (z_local[..., _COLOUR], z_local[..., _STRUCTURE], z_ctx)
        sim = torch.cat([self_similarity(g, self._near, _K_NEIGHBOURS) for g in groups], dim=-1)  # [B, N, 12]
        z = torch.cat([z_local, z_ctx], dim=-1) * _Z_SCALE                        # [B, N, 38]
        ones = torch.ones_like(sim[..., :1])
        return torch.cat([ones, sim, z[..., :_N_DESC].abs(), z], dim=-1)
