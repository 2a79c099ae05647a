"""Turning maps into pictures: one colour scale for every view (CLI PNGs, gallery, dashboard)."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Anchor colours of the map scale (dark blue -> cyan -> yellow -> red), sampled at
# equal steps on [0, 1]: perceptually ordered and readable on a projector.
_ANCHORS = np.array([
    [12, 7, 60], [30, 60, 150], [20, 140, 190], [60, 200, 160],
    [200, 225, 80], [250, 170, 40], [230, 70, 30], [150, 10, 20],
], dtype=np.float32)
COLORSCALE = [[i / (len(_ANCHORS) - 1), f"rgb({r:.0f},{g:.0f},{b:.0f})"] for i, (r, g, b) in enumerate(_ANCHORS)]


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """`[H, W]` floats -> `[H, W, 3]` uint8 on the shared colour scale (clipped to [vmin, vmax])."""
    t = np.clip((np.asarray(values, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    pos = t * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(image: Image.Image, values: np.ndarray, alpha: float = 0.5, vmin: float = 0.0, vmax: float = 1.0) -> Image.Image:
    """Blend the coloured map over `image` (resized to the map's size) with opacity `alpha`."""
    heat = Image.fromarray(colorize(values, vmin, vmax))
    base = image.convert("RGB").resize(heat.size, Image.BILINEAR)
    return Image.blend(base, heat, float(alpha))


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """`[H, W]` bool -> `[H, W]` bool of the mask's boundary pixels (for drawing contours)."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:, :] &= m[:-1, :]
    inner[:-1, :] &= m[1:, :]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def draw_outline(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Draw the mask boundary (resized to the image) in `colour`."""
    m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(image.size, Image.NEAREST)
    edge = mask_outline(np.asarray(m) > 127)
    arr = np.array(image.convert("RGB"))
    arr[edge] = colour
    return Image.fromarray(arr)
