"""Defect renderers: scratch, hole, stain, crack, contamination, missing. Each draws onto a
scene image and returns the new image and the defect's alpha `[S, S]` (its mask before
the annotation threshold)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .draw import (
    Rng,
    bezier,
    blob,
    colour,
    grid,
    log_uniform,
    mix,
    noise,
    polyline_alpha,
)
from .scenes import Scene

DEFECT_KINDS = ("scratch", "hole", "stain", "crack", "contamination", "missing")


@dataclass
class DefectContext:
    """What a defect function needs: the scene and its inner-distance map."""

    scene: Scene
    size: int
    inner: np.ndarray  # float [S, S]: distance (px) from each region pixel to the region's edge
    border: float = 0.0  # textures: keep defect centres this far from the image border

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


DefectResult = tuple[np.ndarray, np.ndarray]  # (image [S, S, 3], alpha [S, S] of the defect)


def _scratch(rng: Rng, img: np.ndarray, ctx: DefectContext) -> DefectResult:
    """A thin curved (quadratic Bezier) line, lighter or darker than the surface."""
    length = log_uniform(rng, 10, 110)
    p0 = ctx.point(rng, 2)
    ang = rng.uniform(0, 2 * np.pi)
    p2 = p0 + length * np.array([np.cos(ang), np.sin(ang)], np.float32)
    normal = np.array([-np.sin(ang), np.cos(ang)], np.float32)
    p1 = (p0 + p2) / 2 + normal * rng.normal(0, 0.25 * length)
    alpha = polyline_alpha(ctx.size, [bezier(p0, p1, p2)], rng.uniform(0.7, 2.6))
    alpha *= ctx.scene.region
    contrast = log_uniform(rng, 0.08, 0.55) * (1.0 if rng.random() < 0.5 else -1.0)
    return img + contrast * alpha[..., None], alpha


def _hole(rng: Rng, img: np.ndarray, ctx: DefectContext) -> DefectResult:
    """A dark irregular pit (depth varies: subtle to black) with a slightly raised rim."""
    r = log_uniform(rng, 2.5, 20)
    c = ctx.point(rng, r + 2)
    pit = blob(rng, ctx.size, c[0], c[1], r, 0.3, softness=1.2)
    rim = np.clip(blob(rng, ctx.size, c[0], c[1], r * 1.2 + 1.0, 0.2, softness=1.5) - pit, 0, 1)
    darkness = rng.uniform(0.05, 0.6)  # 0.6: a shallow, subtle pit
    yy, xx = grid(ctx.size)
    core = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * (0.5 * r) ** 2))
    out = img * (1 - pit * (1 - darkness) - 0.3 * darkness * pit * core)[..., None]
    out = out * (1 + 0.08 * rim * ctx.scene.region)[..., None]  # slightly raised, lit rim
    alpha = np.maximum(pit, 0.6 * rim) * ctx.scene.region
    return out, alpha


def _stain(rng: Rng, img: np.ndarray, ctx: DefectContext) -> DefectResult:
    """A soft-edged tinted blob that darkens the surface a little."""
    r = log_uniform(rng, 5, 38)
    c = ctx.point(rng, 0.5 * r)
    soft = rng.uniform(0.2, 0.6) * r
    alpha = blob(rng, ctx.size, c[0], c[1], r, 0.4, softness=soft) * ctx.scene.region
    # A stain absorbs light: it multiplies the surface by a tint (brown, yellow, grey...).
    tint = colour(rng, rng.uniform(0.0, 0.2), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.7), 0)
    strength = log_uniform(rng, 0.25, 0.85)  # darkening 8..60 %: mostly low contrast
    dirt = 0.8 + 0.4 * noise(rng, ctx.size, 24)
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
            paths += _crack_paths(
                rng, pts[-1], length * rng.uniform(0.25, 0.55), ang + side * rng.uniform(0.4, 1.1), depth - 1
            )
        ang += rng.normal(0, 0.05)  # slow drift of the main heading
    return [np.stack(pts)] + paths


def _crack(rng: Rng, img: np.ndarray, ctx: DefectContext) -> DefectResult:
    """A branching, jagged dark line."""
    length = log_uniform(rng, 14, 110)
    paths = _crack_paths(rng, ctx.point(rng, 3), length, rng.uniform(0, 2 * np.pi), depth=2)
    alpha = polyline_alpha(ctx.size, paths, rng.uniform(0.6, 1.8)) * ctx.scene.region
    strength = rng.uniform(0.3, 0.85)
    return img * (1 - strength * alpha)[..., None], alpha


def _contamination(rng: Rng, img: np.ndarray, ctx: DefectContext) -> DefectResult:
    """Foreign material: a textured particle of another colour, or a tuft of fibres."""
    foreign = colour(rng, rng.random(), rng.uniform(0.2, 0.9), rng.uniform(0.08, 0.95), 0)
    r = log_uniform(rng, 3, 22)
    c = ctx.point(rng, r)
    if rng.random() < 0.6:  # a particle: blob with its own texture
        alpha = blob(rng, ctx.size, c[0], c[1], r, 0.5, softness=1.0)
        grain = noise(rng, ctx.size, max(8, ctx.size // 4), octaves=2)
        content = foreign * (0.55 + 0.9 * (grain - 0.5))[..., None]
        opacity = rng.uniform(0.55, 1.0)
    else:  # fibres: a tuft of thin curly strands
        strands = []
        for _ in range(int(rng.integers(2, 6))):
            a = rng.uniform(0, 2 * np.pi)
            q0 = c + rng.normal(0, 0.3 * r, 2).astype(np.float32)
            q2 = q0 + 2 * r * np.array([np.cos(a), np.sin(a)], np.float32)
            q1 = (q0 + q2) / 2 + rng.normal(0, 0.6 * r, 2).astype(np.float32)
            strands.append(bezier(q0, q1, q2))
        alpha = polyline_alpha(ctx.size, strands, rng.uniform(0.7, 1.6))
        content = np.broadcast_to(foreign, img.shape)
        opacity = rng.uniform(0.6, 1.0)
    alpha = alpha * ctx.scene.region
    return mix(img, content, opacity * alpha), alpha


def _missing(rng: Rng, img: np.ndarray, ctx: DefectContext) -> DefectResult:
    """Material gone: a whole part or a chunk (at an object's edge) shows what lies beneath."""
    scene = ctx.scene
    if scene.parts and rng.random() < 0.5:  # a whole part is gone (e.g. a pin)
        part = scene.parts[int(rng.integers(len(scene.parts)))]
        alpha = ndimage.gaussian_filter(part.astype(np.float32), 0.6)
        alpha = np.clip(alpha * 1.2, 0, 1)
    else:  # a chunk broken off (objects: at the edge)
        r = log_uniform(rng, 6, 36)
        c = ctx.edge_point(rng) if not scene.region.all() else ctx.point(rng, 0)
        alpha = blob(rng, ctx.size, c[0], c[1], r, 0.35, softness=1.0) * scene.region
    # A thin shadow along the break makes the fracture edge visible, as in real chipped parts.
    edge = np.clip(ndimage.gaussian_filter(alpha, 1.2) - alpha, 0, 1) * scene.region
    out = mix(img, scene.under, alpha) * (1 - 0.6 * edge)[..., None]
    return out, alpha


DEFECTS: dict[str, Callable[[Rng, np.ndarray, DefectContext], DefectResult]] = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "crack": _crack,
    "contamination": _contamination,
    "missing": _missing,
}
assert set(DEFECTS) == set(DEFECT_KINDS)
