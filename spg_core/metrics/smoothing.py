"""Gaussian smoothing of anomaly maps before the pixel metrics (sigma 4 in the official code).

CPU numpy maps go through ``scipy.ndimage.gaussian_filter`` itself (what the official
code calls); CUDA and bfloat16 tensors through :func:`spg_core.gaussian.gaussian_blur`
with scipy's edge rule and radius, so every path smooths as scipy does.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from ..errors import SPGError
from ..gaussian import gaussian_blur
from ._inputs import Array
from .chunks import _map_chunk


def _gaussian_torch(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy's Gaussian over the last two axes of ``[..., H, W]``, computed in float32,
    returned in the input dtype."""
    shape = maps.shape
    flat = maps.reshape(-1, 1, shape[-2], shape[-1]).float()  # [N, 1, H, W]
    return gaussian_blur(flat, sigma, mode="reflect").reshape(shape).to(maps.dtype)


def _gaussian_numpy(maps: np.ndarray, sigma: float) -> np.ndarray:
    """scipy Gaussian per map over the last two axes; computed in float32 (or
    float64 for float64 input), returned in the input dtype."""
    work = np.float64 if maps.dtype == np.float64 else np.float32
    out = np.empty_like(maps)
    flat_in = maps.reshape(-1, *maps.shape[-2:])
    flat_out = out.reshape(-1, *maps.shape[-2:])
    for i in range(flat_in.shape[0]):  # one map at a time: bounded temporaries
        flat_out[i] = ndimage.gaussian_filter(flat_in[i].astype(work), sigma, mode="reflect")
    return out


def _smooth_chunk(chunk: Array, sigma: float, code_kind: str) -> Array:
    """Smooth a chunk as produced by :func:`_map_chunk` (uint16 = raw 16-bit codes)."""
    if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint16 and code_kind == "bfloat16":
        t = torch.from_numpy(chunk.view(np.int16)).view(torch.bfloat16)
        return _map_chunk(smooth_maps(t, sigma), np.arange(t.shape[0]), torch.device("cpu"))
    if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint16:
        return smooth_maps(chunk.view(np.float16), sigma).view(np.uint16)
    return smooth_maps(chunk, sigma)


def smooth_maps(maps: Array, sigma: float) -> Array:
    """Gaussian smoothing of each map over its last two axes.

    Same as ``scipy.ndimage.gaussian_filter(map, sigma)`` per map (mode
    'reflect', truncate 4). Computed in float32 and returned in the input's
    type, dtype and device (so float16 maps stay float16 and keep the exact
    histogram path). CUDA tensors are smoothed on the GPU.

    Args:
        maps: [..., H, W] numpy array or torch tensor.
        sigma: standard deviation in pixels; 0 returns ``maps`` unchanged.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise SPGError(
            f"smoothing sigma must be a finite number >= 0, got {sigma!r}",
            fix="use 0 (off) or 4 as in the official SPG code",
        )
    if sigma == 0:
        return maps
    if maps.ndim < 2:
        raise SPGError(f"maps must have at least 2 axes [..., H, W], got shape {tuple(maps.shape)}")
    if isinstance(maps, torch.Tensor):
        if maps.device.type == "cuda":
            return _gaussian_torch(maps, sigma)
        if maps.dtype == torch.bfloat16:
            return _gaussian_torch(maps, sigma)
        return torch.from_numpy(_gaussian_numpy(maps.detach().numpy(), sigma))
    return _gaussian_numpy(np.asarray(maps), sigma)
