"""Patch pixel texture: how much each grid cell of an auxiliary image varies, for the "blank" flag.

A patch's texture is the standard deviation of its pixels in the backbone's input view: the image
resized to the store's image_size (PIL bicubic, the legacy recipe; the filter barely moves a
standard deviation), grayscale (ITU-R 601 luma), 0-1, cut into the store's grid. A flat patch
(plain background) has a std near 0; a textured or edged one does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..images import image_pixels, load_image

LUMA = (0.299, 0.587, 0.114)
BLANK_QUANTILE = 0.10  # the flattest tenth of the auxiliary patches


def gray_patch_std(pixels: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[B, 3, S, S]` pixels in 0-1 -> `[B, N]` grayscale std per grid cell (row-major, N = h w).

    S need not divide by the grid: the last cell of a row or column takes the remainder."""
    gray = torch.einsum("bchw,c->bhw", pixels.double(), torch.tensor(LUMA, dtype=torch.float64))
    h, w = grid
    rows = np.linspace(0, gray.shape[1], h + 1).round().astype(int)
    cols = np.linspace(0, gray.shape[2], w + 1).round().astype(int)
    out = torch.empty(gray.shape[0], h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            cell = gray[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            out[:, i, j] = cell.reshape(gray.shape[0], -1).std(dim=1, unbiased=False)
    return out.reshape(gray.shape[0], h * w)


def patch_pixel_std(
    records: Sequence[dict[str, Any]], size: int, grid: tuple[int, int], chunk_images: int = 32
) -> torch.Tensor:
    """`[n_images, N]` float16 patch pixel std of the store's image records (their image_path), read
    `chunk_images` at a time (memory: one chunk of `[B, 3, S, S]` pixels). SPGError when an image
    cannot be read."""
    out = torch.empty(len(records), grid[0] * grid[1], dtype=torch.float16)
    for lo in range(0, len(records), chunk_images):
        batch = records[lo : lo + chunk_images]
        pixels = torch.stack([image_pixels(load_image(r["image_path"]), size) for r in batch]).float() / 255.0
        out[lo : lo + len(batch)] = gray_patch_std(pixels, grid).to(torch.float16)
    return out


def blank_floor(patch_std: torch.Tensor) -> float:
    """The BLANK_QUANTILE quantile of every auxiliary patch's pixel std (`[n_images, N]`)."""
    return float(np.quantile(patch_std.float().numpy().reshape(-1), BLANK_QUANTILE))
