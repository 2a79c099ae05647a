"""Drawing helpers for the synthetic scenes and defects: coordinates, noise, colours, blobs,
anti-aliased lines and alpha blending. All arrays are float32 `[S, S]` or `[S, S, 3]`."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

Rng = np.random.Generator


@lru_cache(maxsize=4)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx), each float32 [S, S]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False  # shared between threads: never mutate
    return yy, xx


def rotated(size: int, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) [S, S] in a frame centred at (cx, cy) and rotated by theta."""
    yy, xx = grid(size)
    dx, dy = xx - float(cx), yy - float(cy)
    # Python floats, not numpy float64 scalars, so the float32 grids stay float32.
    c, s = math.cos(theta), math.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def log_uniform(rng: Rng, lo: float, hi: float) -> float:
    """Scale-like draws: as many small values per octave as large ones."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def noise(rng: Rng, size: int, cells: int, octaves: int = 1, persistence: float = 0.5) -> np.ndarray:
    """Smooth value noise [S, S] in about [0, 1]: random grids upsampled bicubically."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = min(size, cells * 2**o)
        lattice = rng.random((n + 1, n + 1), dtype=np.float32)
        up = Image.fromarray(lattice).resize((size, size), Image.BICUBIC)
        out += amp * np.asarray(up, np.float32)
        total += amp
        amp *= persistence
    return np.clip(out / total, 0.0, 1.0)


def colour(rng: Rng, hue: float, sat: float, val: float, jitter: float = 0.012) -> np.ndarray:
    """An RGB float32 [3] from HSV; hue jittered by `jitter`, saturation and value by 3x that.

    The default keeps a category's colours recognisably the same across normal
    images (as in MVTec) while never repeating exactly.
    """
    h = (hue + rng.normal(0, jitter)) % 1.0
    s = float(np.clip(sat + rng.normal(0, jitter * 3), 0, 1))
    v = float(np.clip(val + rng.normal(0, jitter * 3), 0, 1))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def blob(rng: Rng, size: int, cx: float, cy: float, r: float, irregularity: float, softness: float = 1.0) -> np.ndarray:
    """Irregular star-convex blob: alpha [S, S] in [0, 1], edge ramp `softness` px wide.

    Its radius varies with angle as r * (1 + sum_k a_k cos(k phi + p_k)), k = 2..5.
    """
    yy, xx = grid(size)
    dx, dy = xx - cx, yy - cy
    d = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    radius = np.full_like(d, r)
    for k in range(2, 6):
        a = rng.normal(0, irregularity / k)
        radius += r * a * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    radius = np.maximum(radius, 0.3 * r)
    return smoothstep((radius - d) / max(softness, 1e-3) + 0.5)


def polyline_alpha(size: int, lines: Sequence[np.ndarray], width: float, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage [S, S] in [0, 1] of polylines ([n, 2] arrays of x, y), drawn at ss x."""
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(width * ss)))
    for pts in lines:
        if len(pts) < 2:
            continue
        xy = [(float(x * ss), float(y * ss)) for x, y in pts]
        draw.line(xy, fill=255, width=w, joint="curve")
        r = w / 2.0  # round caps, so short strokes look like strokes
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, np.float32) / 255.0


def bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 48) -> np.ndarray:
    """Quadratic Bezier curve points [n, 2]."""
    t = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def mix(img: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend [S, S, 3] images with alpha [S, S]."""
    a = alpha[..., None]
    return img * (1 - a) + other * a
