"""The one Gaussian blur in torch, shared by map smoothing and the builtin backbone's features.

Two edge rules are offered because the two users need different ones:

* ``"reflect"``: scipy.ndimage's 'reflect' (``d c b a | a b c d | d c b a``), with scipy's
  radius ``int(4 sigma + 0.5)``: what map smoothing uses, so that a CUDA or bfloat16 map is
  smoothed as ``scipy.ndimage.gaussian_filter`` (the official SPG code) smooths it on CPU.
* ``"mirror"``: torch's 'reflect' padding (``d c b | a b c d | c b a``), the edge sample not
  repeated: what the builtin backbone's features were tuned with (radius ``int(3 sigma)``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SPGError

EDGE_MODES = ("reflect", "mirror")


def scipy_radius(sigma: float, truncate: float = 4.0) -> int:
    """Kernel radius scipy.ndimage.gaussian_filter uses: ``int(truncate * sigma + 0.5)``."""
    return int(truncate * float(sigma) + 0.5)


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy's 'reflect' padding of a length-n axis by ``radius`` (any radius)."""
    i = np.arange(-radius, n + radius) % (2 * n)
    i = np.where(i >= n, 2 * n - 1 - i, i)
    return torch.from_numpy(i).to(device)


def _pad(x: torch.Tensor, radius: int, axis: int, mode: str) -> torch.Tensor:
    """Pad axis 2 (H) or 3 (W) of ``[B, C, H, W]`` by ``radius`` on both sides."""
    if mode == "mirror":
        pad = (radius, radius, 0, 0) if axis == 3 else (0, 0, radius, radius)
        return F.pad(x, pad, mode="reflect")
    return x.index_select(axis, _reflect_index(x.shape[axis], radius, x.device))


def gaussian_blur(x: torch.Tensor, sigma: float, *, radius: int | None = None, mode: str = "reflect") -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]``, each channel on its own, in ``x``'s dtype.

    Args:
        x: ``[B, C, H, W]`` floating tensor (any device).
        sigma: standard deviation in pixels (> 0).
        radius: kernel half-width; default scipy's ``int(4 sigma + 0.5)``.
        mode: edge rule, "reflect" (scipy's) or "mirror" (torch's reflect padding).
    Returns:
        ``[B, C, H, W]``, same dtype and device.
    """
    if mode not in EDGE_MODES:
        raise SPGError(
            f"unknown edge mode {mode!r} for the Gaussian blur", fix=f"use one of {', '.join(map(repr, EDGE_MODES))}"
        )
    if not sigma > 0:
        raise SPGError(f"Gaussian sigma must be > 0, got {sigma!r}", fix="skip the blur for sigma 0")
    radius = scipy_radius(sigma) if radius is None else int(radius)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)  # [C, 1, 1, 2r+1]
    x = F.conv2d(_pad(x, radius, 3, mode), k, groups=x.shape[1])  # along W
    return F.conv2d(_pad(x, radius, 2, mode), k.transpose(-1, -2), groups=x.shape[1])  # along H
