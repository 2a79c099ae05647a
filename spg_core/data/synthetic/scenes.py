"""Normal scenes, one renderer per category: four textures (weave, granite, brushed, tiles) and
four objects (disc, nut, pill, plug), each with per-image pose, phase and colour variation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .draw import Rng, colour, mix, noise, rotated, smoothstep

TEXTURES = ("weave", "granite", "brushed", "tiles")
OBJECTS = ("disc", "nut", "pill", "plug")
CATEGORIES = TEXTURES + OBJECTS


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
    low = noise(rng, size, cells, octaves=3) - 0.5
    fine = 0.5 * rng.standard_normal((size, size), dtype=np.float32)
    fine = ndimage.gaussian_filter(fine, 0.7)
    return base * (1 + amount * low[..., None] + 0.25 * amount * fine[..., None])


def _texture_scene(img: np.ndarray, under: np.ndarray) -> Scene:
    return Scene(img=img, region=np.ones(img.shape[:2], bool), under=under)


def render_weave(rng: Rng, size: int) -> Scene:
    """Woven fabric: warp and weft threads alternating over/under in a checkerboard."""
    period = rng.uniform(11, 16)
    u, v = rotated(size, size / 2, size / 2, rng.uniform(-0.2, 0.2))
    u = u / period + rng.uniform(0, 2)
    v = v / period + rng.uniform(0, 2)
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # warp on top in these cells
    fu, fv = u - np.floor(u), v - np.floor(v)
    across = np.where(over, fu, fv)  # position across the visible thread
    along = np.where(over, fv, fu)
    # (clip: float32 sin(pi) is a hair below 0, and a fractional power of it is NaN)
    profile = np.clip(np.sin(np.pi * np.clip(across * 1.08 - 0.04, 0, 1)), 0, 1) ** 0.7
    profile *= 0.82 + 0.18 * np.clip(np.sin(np.pi * along), 0, 1) ** 0.5  # threads dip where they pass under
    fibre = noise(rng, size, size // 3) - 0.5
    warp = colour(rng, 0.6, 0.55, 0.55)
    weft = colour(rng, 0.58, 0.35, 0.75)
    thread = np.where(over[..., None], warp, weft)
    img = thread * (0.35 + 0.65 * profile[..., None]) * (1 + 0.18 * fibre[..., None])
    under = _surface(rng, size, colour(rng, 0.1, 0.25, 0.22), 0.3)
    return _texture_scene(img, under)


def render_granite(rng: Rng, size: int) -> Scene:
    """Polished granite: mottled base with dark, light and pink grains."""
    base = colour(rng, 0.05, 0.12, 0.62)
    mottle = noise(rng, size, 6, octaves=4)
    img = base * (0.72 + 0.55 * mottle[..., None])
    grains = noise(rng, size, size // 3, octaves=2)
    dark = smoothstep((grains - 0.64) / 0.06)
    img = mix(img, colour(rng, 0.6, 0.15, 0.15)[None, None], 0.8 * dark)
    speck = noise(rng, size, size // 3)
    light = smoothstep((0.3 - speck) / 0.05)
    img = mix(img, colour(rng, 0.1, 0.05, 0.9)[None, None], 0.6 * light)
    pink = smoothstep((noise(rng, size, size // 6, octaves=2) - 0.64) / 0.05)
    img = mix(img, colour(rng, 0.02, 0.4, 0.7)[None, None], 0.7 * pink)
    under = _surface(rng, size, base * 0.55, 0.5, cells=20)  # rough, unpolished stone
    return _texture_scene(img, under)


def render_brushed(rng: Rng, size: int) -> Scene:
    """Brushed metal: fine streaks along one direction plus a soft sheen band."""
    u, v = rotated(size, size / 2, size / 2, rng.uniform(-0.25, 0.25))
    n = 4 * size
    fine = ndimage.gaussian_filter1d(rng.normal(0, 1, n), 0.8)
    coarse = ndimage.gaussian_filter1d(rng.normal(0, 1, n), 5.0)
    pos = (v + size) * 2.0  # 2 samples per pixel across streaks
    streak = np.interp(pos, np.arange(n), fine) * 0.05 + np.interp(pos, np.arange(n), coarse) * 0.25
    streak = streak.astype(np.float32) * (0.8 + 0.4 * noise(rng, size, 3))
    sheen_at, sheen_w = rng.uniform(-0.6, 0.6) * size, rng.uniform(0.2, 0.45) * size
    sheen = 0.18 * np.exp(-(((u - sheen_at) / sheen_w) ** 2))
    base = colour(rng, 0.6, 0.06, 0.66)
    img = base * (1 + streak[..., None] + sheen[..., None])
    under = _surface(rng, size, base * 0.5, 0.25)
    return _texture_scene(img, under)


def render_tiles(rng: Rng, size: int) -> Scene:
    """Ceramic tiles in a grid with grout lines, bevelled edges and per-tile tint."""
    tile = rng.uniform(46, 68)
    grout_w = rng.uniform(3, 6)
    u, v = rotated(size, size / 2, size / 2, rng.uniform(-0.06, 0.06))
    u = u + rng.uniform(0, tile)
    v = v + rng.uniform(0, tile)
    fu, fv = np.mod(u, tile), np.mod(v, tile)
    edge = np.minimum(np.minimum(fu, tile - fu), np.minimum(fv, tile - fv))  # px to nearest joint
    grout = smoothstep((grout_w / 2 + 0.5 - edge) / 1.0)
    ti = (np.floor(u / tile).astype(np.int64) % 8) * 8 + (np.floor(v / tile).astype(np.int64) % 8)
    tint = (1 + rng.normal(0, 0.035, 64).astype(np.float32))[ti]
    bevel = 1 - 0.12 * smoothstep((grout_w / 2 + 4 - edge) / 4)
    glaze = colour(rng, 0.55, 0.25, 0.85)
    img = glaze * (tint * bevel)[..., None] * (1 + 0.06 * (noise(rng, size, 16) - 0.5))[..., None]
    mortar = _surface(rng, size, colour(rng, 0.1, 0.08, 0.5), 0.3, cells=24)
    img = mix(img, mortar, grout)
    under = _surface(rng, size, colour(rng, 0.08, 0.1, 0.38), 0.4, cells=24)  # bare substrate
    return _texture_scene(img, under)


def _shade_dome(d: np.ndarray, r: float) -> np.ndarray:
    """Brightness [S, S] of a dome of radius r: 1 at the centre, darker at the rim."""
    return 0.72 + 0.28 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))


def render_disc(rng: Rng, size: int) -> Scene:
    """A printed disc on a dark mat: domed shading, rim, printed ring and orientation mark."""
    bg = _surface(rng, size, colour(rng, 0.6, 0.1, 0.2), 0.3)
    cx, cy = size / 2 + rng.normal(0, 6, 2)
    r = rng.uniform(72, 84)
    theta = rng.uniform(0, 2 * np.pi)
    u, v = rotated(size, cx, cy, theta)
    d = np.sqrt(u * u + v * v)
    inside = smoothstep(r - d + 0.5)
    body = colour(rng, 0.02, 0.75, 0.8) * _shade_dome(d, r)[..., None]
    body *= (1 - 0.25 * smoothstep((d - (r - 6)) / 3))[..., None]  # rim
    ring = smoothstep(1.6 - np.abs(d - 0.58 * r)) * 0.9
    mark = smoothstep(3.5 - np.abs(v)) * smoothstep(np.minimum(u - 0.25 * r, 0.5 * r - u) + 0.5)
    ink = colour(rng, 0.15, 0.1, 0.95)
    body = mix(body, np.broadcast_to(ink, body.shape), np.maximum(ring, mark))
    img = mix(bg, body, inside)
    return Scene(img=img, region=inside > 0.5, under=bg)


def render_nut(rng: Rng, size: int) -> Scene:
    """A hexagonal nut seen from above: faceted shading, chamfer, threaded hole."""
    bg = _surface(rng, size, colour(rng, 0.1, 0.2, 0.7), 0.25)
    cx, cy = size / 2 + rng.normal(0, 6, 2)
    r = rng.uniform(78, 88)  # corner radius
    theta = rng.uniform(0, np.pi / 3)
    u, v = rotated(size, cx, cy, theta)
    d = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    sector = np.mod(phi, np.pi / 3) - np.pi / 6
    apothem = r * math.cos(math.pi / 6)
    hex_r = apothem / np.cos(sector)  # hexagon boundary at this angle
    hole_r = rng.uniform(0.36, 0.42) * r
    outer = smoothstep(hex_r - d + 0.5)
    hole = smoothstep(hole_r - d + 0.5)
    light = rng.uniform(0, 2 * np.pi)
    facet_angle = np.floor(phi / (np.pi / 3)) * (np.pi / 3) + np.pi / 6 + theta
    metal = colour(rng, 0.6, 0.05, 0.62)
    shade = 0.85 + 0.12 * np.cos(facet_angle - light)
    shade += 0.12 * smoothstep((d - 0.86 * apothem) / 6)  # bright chamfer towards the corners
    threads = 0.8 + 0.2 * np.cos(2 * np.pi * d / 3.2)
    seat = smoothstep(hole_r + 9 - d)  # threaded ring around the hole
    body = metal * (shade * (1 - seat) + threads * 0.7 * seat)[..., None]
    body *= 1 + 0.05 * (noise(rng, size, 30) - 0.5)[..., None]
    alpha = outer * (1 - hole)
    img = mix(bg, body, alpha)
    return Scene(img=img, region=alpha > 0.5, under=bg)


def render_pill(rng: Rng, size: int) -> Scene:
    """A two-tone capsule at a random angle, with cylinder shading, seam and imprint."""
    bg = _surface(rng, size, colour(rng, 0.35, 0.1, 0.85), 0.15)
    cx, cy = size / 2 + rng.normal(0, 7, 2)
    theta = rng.uniform(-np.pi, np.pi)
    half, r = rng.uniform(52, 62), rng.uniform(28, 34)
    u, v = rotated(size, cx, cy, theta)
    t = np.clip(u, -half, half)
    d = np.sqrt((u - t) ** 2 + v**2)  # distance to the capsule's axis segment
    inside = smoothstep(r - d + 0.5)
    cap = np.where((u < 0)[..., None], colour(rng, 0.0, 0.7, 0.75), colour(rng, 0.14, 0.75, 0.95))
    shade = 0.7 + 0.3 * np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))
    spec = 0.25 * np.exp(-(((v + 0.35 * r) / (0.12 * r)) ** 2)) * (np.abs(u) < half + 0.5 * r)
    body = cap * shade[..., None] + spec[..., None]
    seam = smoothstep(1.2 - np.abs(u)) * 0.35
    dots = np.zeros_like(d)
    for k in range(3):  # a printed code on the light half
        dots = np.maximum(dots, smoothstep(2.6 - np.hypot(u - (0.35 + 0.18 * k) * half, v)))
    body = body * (1 - np.maximum(seam, 0.8 * dots))[..., None]
    img = mix(bg, body, inside)
    return Scene(img=img, region=inside > 0.5, under=bg)


def _box(u: np.ndarray, v: np.ndarray, x0: float, x1: float, y0: float, y1: float, radius: float = 0.0) -> np.ndarray:
    """Anti-aliased rounded rectangle alpha [S, S] in (u, v) coordinates."""
    cu, cv = (x0 + x1) / 2, (y0 + y1) / 2
    hu, hv = (x1 - x0) / 2 - radius, (y1 - y0) / 2 - radius
    qu, qv = np.abs(u - cu) - hu, np.abs(v - cv) - hv
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0)
    return smoothstep(radius - outside + 0.5)


def render_plug(rng: Rng, size: int) -> Scene:
    """A plug: rounded body with a recessed label and two metal pins."""
    bg = _surface(rng, size, colour(rng, 0.58, 0.35, 0.35), 0.25)
    cx, cy = size / 2 + rng.normal(0, 5, 2)
    u, v = rotated(size, cx, cy + 18, rng.uniform(-0.15, 0.15))
    w, h = rng.uniform(112, 130), rng.uniform(78, 92)
    body_a = _box(u, v, -w / 2, w / 2, -h / 2, h / 2, radius=12)
    plastic = colour(rng, 0.1, 0.06, 0.88)
    bevel = 1 - 0.18 * smoothstep((u + v) / (w + h) * 2 + 0.3)
    label = _box(u, v, -0.3 * w, 0.3 * w, -0.15 * h, 0.2 * h, radius=4)
    body = plastic * (bevel * (1 - 0.1 * label))[..., None]
    img = mix(bg, body, body_a)
    gap, pin_w, pin_l = rng.uniform(20, 26), rng.uniform(9, 12), rng.uniform(36, 46)
    metal = colour(rng, 0.12, 0.45, 0.8)
    parts = []
    for sign in (-1, 1):
        pin_a = _box(u, v, sign * gap - pin_w / 2, sign * gap + pin_w / 2, -h / 2 - pin_l, -h / 2 + 1, 2)
        shine = 0.75 + 0.35 * np.cos((u - sign * gap) / pin_w * np.pi)
        img = mix(img, metal * shine[..., None], pin_a)
        parts.append(pin_a > 0.5)
    region = (body_a > 0.5) | parts[0] | parts[1]
    return Scene(img=img, region=region, under=bg, parts=parts)


RENDERERS: dict[str, Callable[[Rng, int], Scene]] = {
    "weave": render_weave,
    "granite": render_granite,
    "brushed": render_brushed,
    "tiles": render_tiles,
    "disc": render_disc,
    "nut": render_nut,
    "pill": render_pill,
    "plug": render_plug,
}
