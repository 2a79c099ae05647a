"""One synthetic image: a category's scene, optionally a defect, then the capture effects
shared by every image (gain, colour cast, lighting gradient, focus blur, sensor noise)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .defects import DEFECTS, DefectContext
from .draw import Rng, grid
from .scenes import RENDERERS

IMAGE_SIZE = 256


MIN_DEFECT_PIXELS = 4  # a mask smaller than this is redrawn: the defect must be visible


def _finish(rng: Rng, img: np.ndarray) -> np.ndarray:
    """Capture effects shared by all images: gain, colour cast, lighting gradient, blur, noise.

    [S, S, 3] float -> uint8 [S, S, 3].
    """
    size = img.shape[0]
    yy, xx = grid(size)
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


def render_image(
    category: str, defect: str | None, rng: Rng, size: int = IMAGE_SIZE
) -> tuple[np.ndarray, np.ndarray | None]:
    """One image: (RGB uint8 [S, S, 3], mask bool [S, S] or None for good images)."""
    scene = RENDERERS[category](rng, size)
    img = scene.img.astype(np.float32)
    mask = None
    if defect is not None:
        inner = ndimage.distance_transform_edt(np.pad(scene.region, 1))[1:-1, 1:-1]
        # Textures fill the frame, so their "edge" is the image border: keep defects mostly
        # inside the frame (real defects can touch it, but a half-visible one is a poor label).
        border = 0.05 * size if scene.region.all() else 0.0
        ctx = DefectContext(scene=scene, size=size, inner=inner.astype(np.float32), border=border)
        for _ in range(50):  # redraw if it landed (almost) off-region
            out, alpha = DEFECTS[defect](rng, img, ctx)
            # Annotation threshold: where the defect covers at least 30% of the pixel.
            mask = alpha > 0.3
            if mask.sum() >= MIN_DEFECT_PIXELS:
                img = out
                break
        else:
            raise RuntimeError(f"could not place a {defect} defect on {category}")
    return _finish(rng, img), mask
