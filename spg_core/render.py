"""Turning maps into pictures: one colour scale for every view (CLI PNGs, gallery, dashboard)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .metrics import smooth_maps
from .scoring import upsample

# Anchor colours of the map scale (dark blue -> cyan -> yellow -> red), sampled at
# equal steps on [0, 1]: perceptually ordered and readable on a projector.
_ANCHORS = np.array(
    [
        [12, 7, 60],
        [30, 60, 150],
        [20, 140, 190],
        [60, 200, 160],
        [200, 225, 80],
        [250, 170, 40],
        [230, 70, 30],
        [150, 10, 20],
    ],
    dtype=np.float32,
)
COLORSCALE = [[i / (len(_ANCHORS) - 1), f"rgb({r:.0f},{g:.0f},{b:.0f})"] for i, (r, g, b) in enumerate(_ANCHORS)]


def colorize(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """`[H, W]` floats -> `[H, W, 3]` uint8 on the shared colour scale (clipped to [vmin, vmax])."""
    t = np.clip((np.asarray(values, dtype=np.float32) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    pos = t * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(np.int64).clip(0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(
    image: Image.Image, values: np.ndarray, alpha: float = 0.5, vmin: float = 0.0, vmax: float = 1.0
) -> Image.Image:
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


# -- maps as an inspection engineer reads them ---------------------------------------------------


@dataclass(frozen=True)
class MapScale:
    """How map values become colours: the space ('logit' or 'probability') and its [vmin, vmax].

    `legend` says in words what the two ends mean, for the colour bar's caption; `tick_text`
    labels the two ends.
    """

    space: str
    vmin: float
    vmax: float
    legend: str
    tick_text: tuple[str, str]

    def values(self, probs: np.ndarray) -> np.ndarray:
        """Probabilities `[...]` in this scale's space."""
        return logit(probs) if self.space == "logit" else np.asarray(probs, dtype=np.float64)


PROBABILITY_SCALE = MapScale(
    "probability", 0.0, 1.0, "colour: patch anomaly probability, 0 (blue) to 1 (red)", ("0", "1")
)


def logit(p: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps]: patch probabilities span orders of magnitude."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(q) - np.log1p(-q)


def sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def fitted_scale(pixel_scale: dict[str, float]) -> MapScale:
    """The run's own scale (`thresholds.pixel_scale`): blue at the median auxiliary normal pixel,
    red at their 99.9th percentile, in log-odds."""
    lo, hi = float(pixel_scale["vmin"]), float(pixel_scale["vmax"])
    return MapScale(
        "logit",
        lo,
        hi,
        f"colour: log-odds of the smoothed map, fitted to this run's auxiliary normal pixels: blue = "
        f"their median (p {sigmoid(lo):.2g}), red = their 99.9th percentile (p {sigmoid(hi):.2g}) "
        f"and above",
        (f"normal median\np {sigmoid(lo):.2g}", f"normal 99.9%\np {sigmoid(hi):.2g}"),
    )


def display_map(patch_probs: np.ndarray, size: int, smoothing_sigma: float) -> np.ndarray:
    """Patch probabilities `[h, w]` -> the full map `[S, S]` the run's protocol evaluates:
    bilinear upsampling, then its Gaussian smoothing (sigma in pixels; 0 = none)."""
    probs = torch.as_tensor(np.asarray(patch_probs, dtype=np.float32))
    full = upsample(probs.reshape(1, -1), tuple(probs.shape), size)
    return np.asarray(smooth_maps(full, float(smoothing_sigma))[0].numpy(), dtype=np.float32)


def map_picture(
    image: Image.Image,
    probs: np.ndarray,
    scale: MapScale,
    *,
    alpha: float = 0.55,
    contour_level: float | None = None,
    truth: np.ndarray | None = None,
    contour_colour: tuple[int, int, int] = (255, 255, 255),
    truth_colour: tuple[int, int, int] = (60, 255, 120),
) -> Image.Image:
    """The map `[S, S]` (probabilities) coloured on `scale` over `image`, with two outlines:
    where the map reaches `contour_level` (a probability; white) and the ground truth (green)."""
    picture = overlay(image, scale.values(probs), alpha=alpha, vmin=scale.vmin, vmax=scale.vmax)
    if contour_level is not None:
        above = np.asarray(probs) >= contour_level
        if above.any():
            picture = _thick_outline(picture, above, contour_colour)
    if truth is not None and np.asarray(truth).any():
        picture = _thick_outline(picture, np.asarray(truth, dtype=bool), truth_colour)
    return picture


def _thick_outline(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int]) -> Image.Image:
    """The mask's outline two pixels wide (its own boundary and the one just outside): readable on a projector."""
    return draw_outline(draw_outline(image, mask, colour), _grow(mask), colour)


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (4-neighbourhood)."""
    m = np.asarray(mask, dtype=bool)
    out = m.copy()
    out[1:, :] |= m[:-1, :]
    out[:-1, :] |= m[1:, :]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out
