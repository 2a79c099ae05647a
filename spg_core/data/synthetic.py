"""A deterministic synthetic anomaly dataset in MVTec layout (no download needed).

Eight categories, half textures and half objects, each rendered procedurally
with per-image variation (pose, texture phase, colour jitter, lighting
gradient, focus blur, sensor noise), so a normal image never equals a template:

    textures: weave (woven threads), granite (speckled stone), brushed
              (directional metal streaks), tiles (ceramic grid)
    objects:  disc (printed disc), nut (hexagon with threaded hole),
              pill (two-tone capsule), plug (body with two pins)

Six defect kinds, each with a pixel mask (0/255, the image's size):

    scratch        thin curved line, lighter or darker than the surface
    hole           dark irregular pit with a raised rim
    stain          low-contrast tinted blob with a soft edge
    crack          branching thin dark random walk
    contamination  foreign-coloured particle patch or a tuft of fibres
    missing        material gone: a chunk (or a whole part, e.g. a plug pin)
                   shows the background/substrate underneath

Scale, contrast (subtle to strong), shape and position are random, drawn
log-uniformly so small defects are as common as large ones; object defects lie
on the object. Measured on the default set (seed 0): mask area 0.01 % to 5.5 %
of the image (median 0.24 %), mask extent 5 to 103 px of 256 (median 27 px).
Nothing here was tuned to make a downstream number come out any way.

Two disjoint groups, both with textures and objects and every defect kind, so
aux -> target transfer is possible while target categories stay unseen:
`synthetic-a` and `synthetic-b` (see SYNTHETIC_GROUPS); `synthetic` is all.

Same seed, same bytes: every image draws from its own RNG keyed by
(seed, category, split, defect, index), independent of generation order.
"""

from __future__ import annotations

import colorsys
import math
import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..errors import SPGError
from ..paths import cache_root
from .sample import Dataset

GENERATOR_VERSION = 2          # bump whenever any output byte would change: cached copies regenerate
CACHE_SUBDIR = Path("synthetic") / "v1"
MARKER = "SYNTHETIC.json"
IMAGE_SIZE = 256

TEXTURES = ("weave", "granite", "brushed", "tiles")
OBJECTS = ("disc", "nut", "pill", "plug")
CATEGORIES = TEXTURES + OBJECTS
DEFECT_KINDS = ("scratch", "hole", "stain", "crack", "contamination", "missing")
SYNTHETIC_GROUPS: dict[str, list[str]] = {
    "synthetic-a": ["disc", "granite", "nut", "weave"],
    "synthetic-b": ["brushed", "pill", "plug", "tiles"],
}
ALL_GROUP = "synthetic"

Rng = np.random.Generator


# =========================================================================== drawing helpers

@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (yy, xx), each float32 [S, S]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False   # shared between threads: never mutate
    return yy, xx


def _rotated(size: int, cx: float, cy: float, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u, v) [S, S] in a frame centred at (cx, cy) and rotated by theta."""
    yy, xx = _grid(size)
    dx, dy = xx - float(cx), yy - float(cy)
    # Python floats, not numpy float64 scalars, so the float32 grids stay float32.
    c, s = math.cos(theta), math.sin(theta)
    return dx * c + dy * s, -dx * s + dy * c


def _log_uniform(rng: Rng, lo: float, hi: float) -> float:
    """Scale-like draws: as many small values per octave as large ones."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _noise(rng: Rng, size: int, cells: int, octaves: int = 1, persistence: float = 0.5) -> np.ndarray:
    """Smooth value noise [S, S] in about [0, 1]: random grids upsampled bicubically."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        n = min(size, cells * 2 ** o)
        grid = rng.random((n + 1, n + 1), dtype=np.float32)
        up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
        out += amp * np.asarray(up, np.float32)
        total += amp
        amp *= persistence
    return np.clip(out / total, 0.0, 1.0)


def _colour(rng: Rng, hue: float, sat: float, val: float, jitter: float = 0.012) -> np.ndarray:
    """An RGB float32 [3] from HSV; hue jittered by `jitter`, saturation and value by 3x that.

    The default keeps a category's colours recognisably the same across normal
    images (as in MVTec) while never repeating exactly.
    """
    h = (hue + rng.normal(0, jitter)) % 1.0
    s = float(np.clip(sat + rng.normal(0, jitter * 3), 0, 1))
    v = float(np.clip(val + rng.normal(0, jitter * 3), 0, 1))
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)


def _blob(rng: Rng, size: int, cx: float, cy: float, r: float, irregularity: float,
          softness: float = 1.0) -> np.ndarray:
    """Irregular star-convex blob: alpha [S, S] in [0, 1], edge ramp `softness` px wide.

    Its radius varies with angle as r * (1 + sum_k a_k cos(k phi + p_k)), k = 2..5.
    """
    yy, xx = _grid(size)
    dx, dy = xx - cx, yy - cy
    d = np.sqrt(dx * dx + dy * dy)
    phi = np.arctan2(dy, dx)
    radius = np.full_like(d, r)
    for k in range(2, 6):
        a = rng.normal(0, irregularity / k)
        radius += r * a * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    radius = np.maximum(radius, 0.3 * r)
    return _smoothstep((radius - d) / max(softness, 1e-3) + 0.5)


def _polyline_alpha(size: int, lines: Sequence[np.ndarray], width: float, ss: int = 4) -> np.ndarray:
    """Anti-aliased coverage [S, S] in [0, 1] of polylines ([n, 2] arrays of x, y), drawn at ss x."""
    canvas = Image.new("L", (size * ss, size * ss), 0)
    draw = ImageDraw.Draw(canvas)
    w = max(1, int(round(width * ss)))
    for pts in lines:
        if len(pts) < 2:
            continue
        xy = [(float(x * ss), float(y * ss)) for x, y in pts]
        draw.line(xy, fill=255, width=w, joint="curve")
        r = w / 2.0                                 # round caps, so short strokes look like strokes
        for x, y in (xy[0], xy[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    small = canvas.resize((size, size), Image.BOX)
    return np.asarray(small, np.float32) / 255.0


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int = 48) -> np.ndarray:
    """Quadratic Bezier curve points [n, 2]."""
    t = np.linspace(0, 1, n, dtype=np.float32)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2


def _mix(img: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend [S, S, 3] images with alpha [S, S]."""
    a = alpha[..., None]
    return img * (1 - a) + other * a


# =========================================================================== scenes

@dataclass
class Scene:
    """A rendered normal image before lighting and noise.

    img: [S, S, 3] float32 in about [0, 1]. region: bool [S, S], where defects may
    go (the object; everywhere for textures). under: [S, S, 3], what shows where
    material is missing (background or substrate). parts: bool [S, S] masks of
    removable parts (may be empty).
    """

    img: np.ndarray
    region: np.ndarray
    under: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)


def _surface(rng: Rng, size: int, base: np.ndarray, amount: float, cells: int = 6) -> np.ndarray:
    """A plain surface [S, S, 3]: `base` colour with low-frequency mottling and fine grain."""
    low = _noise(rng, size, cells, octaves=3) - 0.5
    fine = 0.5 * rng.standard_normal((size, size), dtype=np.float32)
    fine = ndimage.gaussian_filter(fine, 0.7)
    return base * (1 + amount * low[..., None] + 0.25 * amount * fine[..., None])


def _texture_scene(img: np.ndarray, under: np.ndarray) -> Scene:
    return Scene(img=img, region=np.ones(img.shape[:2], bool), under=under)


def render_weave(rng: Rng, size: int) -> Scene:
    """Woven fabric: warp and weft threads alternating over/under in a checkerboard."""
    period = rng.uniform(11, 16)
    u, v = _rotated(size, size / 2, size / 2, rng.uniform(-0.2, 0.2))
    u = u / period + rng.uniform(0, 2)
    v = v / period + rng.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0          # warp on top in these cells
    fu, fv = u - np.floor(u), v - np.floor(v)
    across = np.where(over, fu, fv)                       # position across the visible thread
    along = np.where(over, fv, fu)
    # (clip: float32 sin(pi) is a hair below 0, and a fractional power of it is NaN)
    profile = np.clip(np.sin(np.pi * np.clip(across * 1.08 - 0.04, 0, 1)), 0, 1) ** 0.7
    profile *= 0.82 + 0.18 * np.clip(np.sin(np.pi * along), 0, 1) ** 0.5   # threads dip where they pass under
    fibre = _noise(rng, size, size // 3) - 0.5
    warp = _colour(rng, 0.6, 0.55, 0.55)
    weft = _colour(rng, 0.58, 0.35, 0.75)
    thread = np.where(over[..., None], warp, weft)
    img = thread * (0.35 + 0.65 * profile[..., None]) * (1 + 0.18 * fibre[..., None])
    under = _surface(rng, size, _colour(rng, 0.1, 0.25, 0.22), 0.3)
    return _texture_scene(img, under)


def render_granite(rng: Rng, size: int) -> Scene:
    """Polished granite: mottled base with dark, light and pink grains."""
    base = _colour(rng, 0.05, 0.12, 0.62)
    mottle = _noise(rng, size, 6, octaves=4)
    img = base * (0.72 + 0.55 * mottle[..., None])
    grains = _noise(rng, size, size // 3, octaves=2)
    dark = _smoothstep((grains - 0.64) / 0.06)
    img = _mix(img, _colour(rng, 0.6, 0.15, 0.15)[None, None], 0.8 * dark)
    speck = _noise(rng, size, size // 3)
    light = _smoothstep((0.3 - speck) / 0.05)
    img = _mix(img, _colour(rng, 0.1, 0.05, 0.9)[None, None], 0.6 * light)
    pink = _smoothstep((_noise(rng, size, size // 6, octaves=2) - 0.64) / 0.05)
    img = _mix(img, _colour(rng, 0.02, 0.4, 0.7)[None, None], 0.7 * pink)
    under = _surface(rng, size, base * 0.55, 0.5, cells=20)   # rough, unpolished stone
    return _texture_scene(img, under)


def render_brushed(rng: Rng, size: int) -> Scene:
    """Brushed metal: fine streaks along one direction plus a soft sheen band."""
    u, v = _rotated(size, size / 2, size / 2, rng.uniform(-0.25, 0.25))
    n = 4 * size
    fine = ndimage.gaussian_filter1d(rng.normal(0, 1, n), 0.8)
    coarse = ndimage.gaussian_filter1d(rng.normal(0, 1, n), 5.0)
    pos = (v + size) * 2.0                                  # 2 samples per pixel across streaks
    streak = (np.interp(pos, np.arange(n), fine) * 0.05 + np.interp(pos, np.arange(n), coarse) * 0.25)
    streak = streak.astype(np.float32) * (0.8 + 0.4 * _noise(rng, size, 3))
    sheen_at, sheen_w = rng.uniform(-0.6, 0.6) * size, rng.uniform(0.2, 0.45) * size
    sheen = 0.18 * np.exp(-((u - sheen_at) / sheen_w) ** 2)
    base = _colour(rng, 0.6, 0.06, 0.66)
    img = base * (1 + streak[..., None] + sheen[..., None])
    under = _surface(rng, size, base * 0.5, 0.25)
    return _texture_scene(img, under)


def render_tiles(rng: Rng, size: int) -> Scene:
    """Ceramic tiles in a grid with grout lines, bevelled edges and per-tile tint."""
    tile = rng.uniform(46, 68)
    grout_w = rng.uniform(3, 6)
    u, v = _rotated(size, size / 2, size / 2, rng.uniform(-0.06, 0.06))
    u = u + rng.uniform(0, tile)
    v = v + rng.uniform(0, tile)
    fu, fv = np.mod(u, tile), np.mod(v, tile)
    edge = np.minimum(np.minimum(fu, tile - fu), np.minimum(fv, tile - fv))   # px to nearest joint
    grout = _smoothstep((grout_w / 2 + 0.5 - edge) / 1.0)
    ti = (np.floor(u / tile).astype(np.int64) % 8) * 8 + (np.floor(v / tile).astype(np.int64) % 8)
    tint = (1 + rng.normal(0, 0.035, 64).astype(np.float32))[ti]
    bevel = 1 - 0.12 * _smoothstep((grout_w / 2 + 4 - edge) / 4)
    glaze = _colour(rng, 0.55, 0.25, 0.85)
    img = glaze * (tint * bevel)[..., None] * (1 + 0.06 * (_noise(rng, size, 16) - 0.5))[..., None]
    mortar = _surface(rng, size, _colour(rng, 0.1, 0.08, 0.5), 0.3, cells=24)
    img = _mix(img, mortar, grout)
    under = _surface(rng, size, _colour(rng, 0.08, 0.1, 0.38), 0.4, cells=24)  # bare substrate
    return _texture_scene(img, under)


def _shade_dome(d: np.ndarray, r: float) -> np.ndarray:
    """Brightness [S, S] of a dome of radius r: 1 at the centre, darker at the rim."""
    return 0.72 + 0.28 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))


def render_disc(rng: Rng, size: int) -> Scene:
    """A printed disc on a dark mat: domed shading, rim, printed ring and orientation mark."""
    bg = _surface(rng, size, _colour(rng, 0.6, 0.1, 0.2), 0.3)
    cx, cy = size / 2 + rng.normal(0, 6, 2)
    r = rng.uniform(72, 84)
    theta = rng.uniform(0, 2 * np.pi)
    u, v = _rotated(size, cx, cy, theta)
    d = np.sqrt(u * u + v * v)
    inside = _smoothstep(r - d + 0.5)
    body = _colour(rng, 0.02, 0.75, 0.8) * _shade_dome(d, r)[..., None]
    body *= (1 - 0.25 * _smoothstep((d - (r - 6)) / 3))[..., None]                 # rim
    ring = _smoothstep(1.6 - np.abs(d - 0.58 * r)) * 0.9
    mark = (_smoothstep(3.5 - np.abs(v)) * _smoothstep(np.minimum(u - 0.25 * r, 0.5 * r - u) + 0.5))
    ink = _colour(rng, 0.15, 0.1, 0.95)
    body = _mix(body, np.broadcast_to(ink, body.shape), np.maximum(ring, mark))
    img = _mix(bg, body, inside)
    return Scene(img=img, region=inside > 0.5, under=bg)


def render_nut(rng: Rng, size: int) -> Scene:
    """A hexagonal nut seen from above: faceted shading, chamfer, threaded hole."""
    bg = _surface(rng, size, _colour(rng, 0.1, 0.2, 0.7), 0.25)
    cx, cy = size / 2 + rng.normal(0, 6, 2)
    r = rng.uniform(78, 88)                                # corner radius
    theta = rng.uniform(0, np.pi / 3)
    u, v = _rotated(size, cx, cy, theta)
    d = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    sector = np.mod(phi, np.pi / 3) - np.pi / 6
    apothem = r * math.cos(math.pi / 6)
    hex_r = apothem / np.cos(sector)                       # hexagon boundary at this angle
    hole_r = rng.uniform(0.36, 0.42) * r
    outer = _smoothstep(hex_r - d + 0.5)
    hole = _smoothstep(hole_r - d + 0.5)
    light = rng.uniform(0, 2 * np.pi)
    facet_angle = np.floor(phi / (np.pi / 3)) * (np.pi / 3) + np.pi / 6 + theta
    metal = _colour(rng, 0.6, 0.05, 0.62)
    shade = 0.85 + 0.12 * np.cos(facet_angle - light)
    shade += 0.12 * _smoothstep((d - 0.86 * apothem) / 6)   # bright chamfer towards the corners
    threads = 0.8 + 0.2 * np.cos(2 * np.pi * d / 3.2)
    seat = _smoothstep(hole_r + 9 - d)                     # threaded ring around the hole
    body = metal * (shade * (1 - seat) + threads * 0.7 * seat)[..., None]
    body *= 1 + 0.05 * (_noise(rng, size, 30) - 0.5)[..., None]
    alpha = outer * (1 - hole)
    img = _mix(bg, body, alpha)
    return Scene(img=img, region=alpha > 0.5, under=bg)


def render_pill(rng: Rng, size: int) -> Scene:
    """A two-tone capsule at a random angle, with cylinder shading, seam and imprint."""
    bg = _surface(rng, size, _colour(rng, 0.35, 0.1, 0.85), 0.15)
    cx, cy = size / 2 + rng.normal(0, 7, 2)
    theta = rng.uniform(-np.pi, np.pi)
    half, r = rng.uniform(52, 62), rng.uniform(28, 34)
    u, v = _rotated(size, cx, cy, theta)
    t = np.clip(u, -half, half)
    d = np.sqrt((u - t) ** 2 + v ** 2)                     # distance to the capsule's axis segment
    inside = _smoothstep(r - d + 0.5)
    cap = np.where((u < 0)[..., None], _colour(rng, 0.0, 0.7, 0.75), _colour(rng, 0.14, 0.75, 0.95))
    shade = 0.7 + 0.3 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))
    spec = 0.25 * np.exp(-((v + 0.35 * r) / (0.12 * r)) ** 2) * (np.abs(u) < half + 0.5 * r)
    body = cap * shade[..., None] + spec[..., None]
    seam = _smoothstep(1.2 - np.abs(u)) * 0.35
    dots = np.zeros_like(d)
    for k in range(3):                                     # a printed code on the light half
        dots = np.maximum(dots, _smoothstep(2.6 - np.hypot(u - (0.35 + 0.18 * k) * half, v)))
    body = body * (1 - np.maximum(seam, 0.8 * dots))[..., None]
    img = _mix(bg, body, inside)
    return Scene(img=img, region=inside > 0.5, under=bg)


def _box(u: np.ndarray, v: np.ndarray, x0: float, x1: float, y0: float, y1: float,
         radius: float = 0.0) -> np.ndarray:
    """Anti-aliased rounded rectangle alpha [S, S] in (u, v) coordinates."""
    cu, cv = (x0 + x1) / 2, (y0 + y1) / 2
    hu, hv = (x1 - x0) / 2 - radius, (y1 - y0) / 2 - radius
    qu, qv = np.abs(u - cu) - hu, np.abs(v - cv) - hv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0)
    return _smoothstep(radius - outside + 0.5)


def render_plug(rng: Rng, size: int) -> Scene:
    """A plug: rounded body with a recessed label and two metal pins."""
    bg = _surface(rng, size, _colour(rng, 0.58, 0.35, 0.35), 0.25)
    cx, cy = size / 2 + rng.normal(0, 5, 2)
    u, v = _rotated(size, cx, cy + 18, rng.uniform(-0.15, 0.15))
    w, h = rng.uniform(112, 130), rng.uniform(78, 92)
    body_a = _box(u, v, -w / 2, w / 2, -h / 2, h / 2, radius=12)
    plastic = _colour(rng, 0.1, 0.06, 0.88)
    bevel = 1 - 0.18 * _smoothstep((u + v) / (w + h) * 2 + 0.3)
    label = _box(u, v, -0.3 * w, 0.3 * w, -0.15 * h, 0.2 * h, radius=4)
    body = plastic * (bevel * (1 - 0.1 * label))[..., None]
    img = _mix(bg, body, body_a)
    gap, pin_w, pin_l = rng.uniform(20, 26), rng.uniform(9, 12), rng.uniform(36, 46)
    metal = _colour(rng, 0.12, 0.45, 0.8)
    parts = []
    for sign in (-1, 1):
        pin_a = _box(u, v, sign * gap - pin_w / 2, sign * gap + pin_w / 2, -h / 2 - pin_l, -h / 2 + 1, 2)
        shine = 0.75 + 0.35 * np.cos((u - sign * gap) / pin_w * np.pi)
        img = _mix(img, metal * shine[..., None], pin_a)
        parts.append(pin_a > 0.5)
    region = (body_a > 0.5) | parts[0] | parts[1]
    return Scene(img=img, region=region, under=bg, parts=parts)


RENDERERS: dict[str, Callable[[Rng, int], Scene]] = {
    "weave": render_weave, "granite": render_granite, "brushed": render_brushed, "tiles": render_tiles,
    "disc": render_disc, "nut": render_nut, "pill": render_pill, "plug": render_plug,
}


# =========================================================================== defects

@dataclass
class _Ctx:
    """What a defect function needs: the scene and its inner-distance map."""

    scene: Scene
    size: int
    inner: np.ndarray      # float [S, S]: distance (px) from each region pixel to the region's edge
    border: float = 0.0    # textures: keep defect centres this far from the image border

    def point(self, rng: Rng, margin: float) -> np.ndarray:
        """A random (x, y) inside the region, at least `margin` px from its edge when possible."""
        ok = self.inner >= min(max(margin, self.border), float(self.inner.max()))
        ys, xs = np.nonzero(ok)
        i = int(rng.integers(len(xs)))
        return np.array([xs[i], ys[i]], np.float32) + rng.uniform(-0.5, 0.5, 2).astype(np.float32)

    def edge_point(self, rng: Rng) -> np.ndarray:
        """A random (x, y) on the region's boundary (objects) or anywhere (textures)."""
        ok = (self.inner > 0) & (self.inner <= 2)
        if not ok.any() or self.scene.region.all():
            return self.point(rng, 0)
        ys, xs = np.nonzero(ok)
        i = int(rng.integers(len(xs)))
        return np.array([xs[i], ys[i]], np.float32)


DefectResult = tuple[np.ndarray, np.ndarray]     # (image [S, S, 3], alpha [S, S] of the defect)


def _scratch(rng: Rng, img: np.ndarray, ctx: _Ctx) -> DefectResult:
    """A thin curved (quadratic Bezier) line, lighter or darker than the surface."""
    length = _log_uniform(rng, 10, 110)
    p0 = ctx.point(rng, 2)
    ang = rng.uniform(0, 2 * np.pi)
    p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)], np.float32)
    normal = np.array([-np.sin(ang), np.cos(ang)], np.float32)
    p1 = (p0 + p2) / 2 + normal * rng.normal(0, 0.25 * length)
    alpha = _polyline_alpha(ctx.size, [_bezier(p0, p1, p2)], rng.uniform(0.7, 2.6))
    alpha *= ctx.scene.region
    contrast = _log_uniform(rng, 0.08, 0.55) * (1.0 if rng.random() < 0.5 else -1.0)
    return img + contrast * alpha[..., None], alpha


def _hole(rng: Rng, img: np.ndarray, ctx: _Ctx) -> DefectResult:
    """A dark irregular pit (depth varies: subtle to black) with a slightly raised rim."""
    r = _log_uniform(rng, 2.5, 20)
    c = ctx.point(rng, r + 2)
    pit = _blob(rng, ctx.size, c[0], c[1], r, 0.3, softness=1.2)
    rim = np.clip(_blob(rng, ctx.size, c[0], c[1], r * 1.2 + 1.0, 0.2, softness=1.5) - pit, 0, 1)
    darkness = rng.uniform(0.05, 0.6)                     # 0.6: a shallow, subtle pit
    yy, xx = _grid(ctx.size)
    core = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * (0.5 * r) ** 2))
    out = img * (1 - pit * (1 - darkness) - 0.3 * darkness * pit * core)[..., None]
    out = out * (1 + 0.08 * rim * ctx.scene.region)[..., None]   # slightly raised, lit rim
    alpha = np.maximum(pit, 0.6 * rim) * ctx.scene.region
    return out, alpha


def _stain(rng: Rng, img: np.ndarray, ctx: _Ctx) -> DefectResult:
    """A soft-edged tinted blob that darkens the surface a little."""
    r = _log_uniform(rng, 5, 38)
    c = ctx.point(rng, 0.5 * r)
    soft = rng.uniform(0.2, 0.6) * r
    alpha = _blob(rng, ctx.size, c[0], c[1], r, 0.4, softness=soft) * ctx.scene.region
    # A stain absorbs light: it multiplies the surface by a tint (brown, yellow, grey...).
    tint = _colour(rng, rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.7), 0)
    strength = _log_uniform(rng, 0.25, 0.85)              # darkening 8..60 %: mostly low contrast
    dirt = 0.8 + 0.4 * _noise(rng, ctx.size, 24)
    factor = 1 - strength * alpha[..., None] * (1 - tint) * dirt[..., None]
    return img * factor, alpha


def _crack_paths(rng: Rng, start: np.ndarray, length: float, ang: float, depth: int) -> list[np.ndarray]:
    """A jagged random walk from `start` with occasional branches (depth-limited)."""
    step = 2.0
    n = max(3, int(length / step))
    pts = [start]
    paths: list[np.ndarray] = []
    dev = 0.0
    for _ in range(n):
        # Jagged but directed: the deviation from the heading decays, so cracks do not curl up.
        dev = 0.8 * dev + rng.normal(0, 0.3)
        a = ang + dev
        pts.append(pts[-1] + step * np.array([math.cos(a), math.sin(a)], np.float32))
        if depth > 0 and rng.random() < 0.05:
            side = 1.0 if rng.random() < 0.5 else -1.0
            paths += _crack_paths(rng, pts[-1], length * rng.uniform(0.25, 0.55),
                                  ang + side * rng.uniform(0.4, 1.1), depth - 1)
        ang += rng.normal(0, 0.05)                        # slow drift of the main heading
    return [np.stack(pts)] + paths


def _crack(rng: Rng, img: np.ndarray, ctx: _Ctx) -> DefectResult:
    """A branching, jagged dark line."""
    length = _log_uniform(rng, 14, 110)
    paths = _crack_paths(rng, ctx.point(rng, 3), length, rng.uniform(0, 2 * np.pi), depth=2)
    alpha = _polyline_alpha(ctx.size, paths, rng.uniform(0.6, 1.8)) * ctx.scene.region
    strength = rng.uniform(0.3, 0.85)
    return img * (1 - strength * alpha)[..., None], alpha


def _contamination(rng: Rng, img: np.ndarray, ctx: _Ctx) -> DefectResult:
    """Foreign material: a textured particle of another colour, or a tuft of fibres."""
    foreign = _colour(rng, rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.08, 0.95), 0)
    r = _log_uniform(rng, 3, 22)
    c = ctx.point(rng, r)
    if rng.random() < 0.6:                                # a particle: blob with its own texture
        alpha = _blob(rng, ctx.size, c[0], c[1], r, 0.5, softness=1.0)
        grain = _noise(rng, ctx.size, max(8, ctx.size // 4), octaves=2)
        content = foreign * (0.55 + 0.9 * (grain - 0.5))[..., None]
        opacity = rng.uniform(0.55, 1.0)
    else:                                                 # fibres: a tuft of thin curly strands
        strands = []
        for _ in range(int(rng.integers(2, 6))):
            a = rng.uniform(0, 2 * np.pi)
            q0 = c + rng.normal(0, 0.3 * r, 2).astype(np.float32)
            q2 = q0 + 2 * r * np.array([np.cos(a), np.sin(a)], np.float32)
            q1 = (q0 + q2) / 2 + rng.normal(0, 0.6 * r, 2).astype(np.float32)
            strands.append(_bezier(q0, q1, q2))
        alpha = _polyline_alpha(ctx.size, strands, rng.uniform(0.7, 1.6))
        content = np.broadcast_to(foreign, img.shape)
        opacity = rng.uniform(0.6, 1.0)
    alpha = alpha * ctx.scene.region
    return _mix(img, content, opacity * alpha), alpha


def _missing(rng: Rng, img: np.ndarray, ctx: _Ctx) -> DefectResult:
    """Material gone: a whole part or a chunk (at an object's edge) shows what lies beneath."""
    scene = ctx.scene
    if scene.parts and rng.random() < 0.5:               # a whole part is gone (e.g. a pin)
        part = scene.parts[int(rng.integers(len(scene.parts)))]
        alpha = ndimage.gaussian_filter(part.astype(np.float32), 0.6)
        alpha = np.clip(alpha * 1.2, 0, 1)
    else:                                                 # a chunk broken off (objects: at the edge)
        r = _log_uniform(rng, 6, 36)
        c = ctx.edge_point(rng) if not scene.region.all() else ctx.point(rng, 0)
        alpha = _blob(rng, ctx.size, c[0], c[1], r, 0.35, softness=1.0) * scene.region
    # A thin shadow along the break makes the fracture edge visible, as in real chipped parts.
    edge = np.clip(ndimage.gaussian_filter(alpha, 1.2) - alpha, 0, 1) * scene.region
    out = _mix(img, scene.under, alpha) * (1 - 0.6 * edge)[..., None]
    return out, alpha


DEFECTS: dict[str, Callable[[Rng, np.ndarray, _Ctx], DefectResult]] = {
    "scratch": _scratch, "hole": _hole, "stain": _stain, "crack": _crack,
    "contamination": _contamination, "missing": _missing,
}
assert set(DEFECTS) == set(DEFECT_KINDS)

MIN_DEFECT_PIXELS = 4   # a mask smaller than this is redrawn: the defect must be visible


def _finish(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Capture effects shared by all images: gain, colour cast, lighting gradient, blur, noise.

    [S, S, 3] float -> uint8 [S, S, 3].
    """
    size = img.shape[0]
    yy, xx = _grid(size)
    ang = rng.uniform(0, 2 * np.pi)
    slope = rng.uniform(0, 0.18)
    ramp = ((xx - size / 2) * math.cos(ang) + (yy - size / 2) * math.sin(ang)) / size
    gain = rng.uniform(0.88, 1.1) * rng.uniform(0.96, 1.04, 3).astype(np.float32)
    out = img * gain * (1 + slope * ramp)[..., None]
    blur = rng.uniform(0, 0.7)
    if blur > 0.2:
        out = ndimage.gaussian_filter(out, (blur, blur, 0))
    out = out + rng.uniform(0.004, 0.018) * rng.standard_normal(out.shape, dtype=np.float32)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def render_image(category: str, defect: str | None, rng: Rng,
                 size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray | None]:
    """One image: (RGB uint8 [S, S, 3], mask bool [S, S] or None for good images)."""
    scene = RENDERERS[category](rng, size)
    img = scene.img.astype(np.float32)
    mask = None
    if defect is not None:
        inner = ndimage.distance_transform_edt(np.pad(scene.region, 1))[1:-1, 1:-1]
        # Textures fill the frame, so their "edge" is the image border: keep defects mostly
        # inside the frame (real defects can touch it, but a half-visible one is a poor label).
        border = 0.05 * size if scene.region.all() else 0.0
        ctx = _Ctx(scene=scene, size=size, inner=inner.astype(np.float32), border=border)
        for _ in range(50):                               # redraw if it landed (almost) off-region
            out, alpha = DEFECTS[defect](rng, img, ctx)
            # Annotation threshold: where the defect covers at least 30% of the pixel.
            mask = alpha > 0.3
            if mask.sum() >= MIN_DEFECT_PIXELS:
                img = out
                break
        else:
            raise RuntimeError(f"could not place a {defect} defect on {category}")
    return _finish(rng, img), mask


# =========================================================================== dataset files

def _rng(seed: int, category: str, split: str, defect: str, index: int) -> Rng:
    """An RNG keyed by the image's identity (crc32: stable across runs, unlike hash())."""
    key = zlib.crc32(f"{category}/{split}/{defect}".encode())
    return np.random.default_rng([seed, key, index, GENERATOR_VERSION])


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1: sensor noise makes images nearly incompressible, and level 6 costs ~1.5x the time.
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _write_category(root: Path, category: str, seed: int, defects: Sequence[str],
                    n_train_good: int, n_test_good: int, n_per_defect: int, size: int) -> None:
    """Write ROOT/CATEGORY/{train/good, test/*, ground_truth/*} for one category."""
    cat = root / category
    jobs = ([("train", "good", i) for i in range(n_train_good)]
            + [("test", "good", i) for i in range(n_test_good)]
            + [("test", d, i) for d in defects for i in range(n_per_defect)])
    for split, defect, i in jobs:
        rng = _rng(seed, category, split, defect, i)
        img, mask = render_image(category, None if defect == "good" else defect, rng, size)
        _save_png(img, cat / split / defect / f"{i:03d}.png")
        if mask is not None:
            _save_png(mask.astype(np.uint8) * 255, cat / "ground_truth" / defect / f"{i:03d}_mask.png")


def _marker(seed: int, categories: Sequence[str], defects: Sequence[str], n_train_good: int,
            n_test_good: int, n_per_defect: int, size: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "size": size,
            "categories": list(categories), "defects": list(defects),
            "n_train_good": n_train_good, "n_test_good": n_test_good, "n_per_defect": n_per_defect}


def _marker_matches(root: Path, expected: dict) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


def _swap_into_place(tmp: Path, root: Path, expected: dict, force: bool) -> None:
    """Rename the finished `tmp` onto `root`, replacing a stale copy; tolerate a racing writer."""
    if not force and _marker_matches(root, expected):
        return                        # a concurrent writer finished first: keep its (identical) copy
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}-{tmp.name[-8:]}")
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if not _marker_matches(root, expected):   # someone else won the race with a valid copy: fine
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_synthetic(root: str | os.PathLike, seed: int = 0, *,
                       categories: Sequence[str] = CATEGORIES, defects: Sequence[str] = DEFECT_KINDS,
                       n_train_good: int = 4, n_test_good: int = 10, n_per_defect: int = 4,
                       size: int = IMAGE_SIZE, force: bool = False, workers: int | None = None) -> Path:
    """Write the synthetic dataset (MVTec layout) to `root`, atomically; return `root`.

    Per category: train/good n_train_good, test/good n_test_good, and
    n_per_defect anomalies per defect kind in test/<defect> with masks in
    ground_truth/<defect>/NNN_mask.png. A `SYNTHETIC.json` marker records the
    generator version and parameters: if it matches, nothing is rewritten.
    The set is built in a temporary sibling folder and renamed into place.
    Categories render in `workers` threads (default: one per CPU, at most 4);
    numpy, scipy and PNG encoding release the GIL for most of the work, and
    threads avoid forking a process that may hold torch or GUI threads.
    """
    root = Path(root)
    unknown = [c for c in categories if c not in RENDERERS] + [d for d in defects if d not in DEFECTS]
    if unknown:
        raise SPGError(f"unknown synthetic category/defect {unknown}",
                       fix=f"choose categories from {list(CATEGORIES)} and defects from {list(DEFECT_KINDS)}")
    expected = _marker(seed, categories, defects, n_train_good, n_test_good, n_per_defect, size)
    if not force and _marker_matches(root, expected):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    except OSError as exc:
        raise SPGError(f"cannot write the synthetic dataset ({exc})", path=str(root),
                       fix="set SPG_CACHE (or pass cache_dir) to a writable folder") from None
    try:
        n_workers = workers or min(os.cpu_count() or 1, 4)
        with ThreadPoolExecutor(max_workers=max(1, min(n_workers, len(categories)))) as pool:
            jobs = [pool.submit(_write_category, tmp, c, seed, defects, n_train_good, n_test_good,
                                n_per_defect, size) for c in categories]
            for job in jobs:
                job.result()                                     # re-raise any worker error
        (tmp / MARKER).write_text(json.dumps(expected, indent=2) + "\n")   # written last: marks completion
        _swap_into_place(tmp, root, expected, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def synthetic_root(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / CACHE_SUBDIR


def open_synthetic(spec: str, split: str = "test", cache_dir: str | os.PathLike | None = None) -> Dataset:
    """`synthetic-a`, `synthetic-b` or `synthetic` (all): generate on first use, then load."""
    from .mvtec import load_mvtec   # local import: mvtec does not depend on this module

    if spec != ALL_GROUP and spec not in SYNTHETIC_GROUPS:
        raise SPGError(f"unknown synthetic dataset {spec!r}",
                       fix=f"use one of {[ALL_GROUP, *SYNTHETIC_GROUPS]}")
    root = generate_synthetic(synthetic_root(cache_dir))
    ds = load_mvtec(root, split, name=spec)
    return ds if spec == ALL_GROUP else ds.filter(categories=SYNTHETIC_GROUPS[spec])
