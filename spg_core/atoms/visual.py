"""Pictures of atoms: activation heatmaps, patch crops, and the Figure-5 style gallery.

Patch geometry is that of the model's view: the image resized to S x S and cut
into a `grid = (h, w)` of cells, patch p at row p // w, column p % w.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path
from ..images import load_image
from ..render import overlay
from ..sae import TopKSAE
from ..scoring import upsample

IN_MASK = (230, 40, 40)  # box colour of a patch overlapping a defect mask
OUT_MASK = (255, 255, 255)  # box colour of any other patch


@torch.no_grad()
def atom_activation(sae: TopKSAE, tokens: torch.Tensor, atom: int) -> torch.Tensor:
    """s_atom at every token: `[..., N, D]` -> `[..., N]` (zero where the atom is not in the top k)."""
    flat = tokens.reshape(-1, tokens.shape[-1]).to(next(sae.parameters()).device).float()
    code = sae.encode(flat)
    act = (code.values * (code.indices == atom)).sum(-1)
    return act.reshape(tokens.shape[:-1]).cpu()


def atom_heatmap(sae: TopKSAE, tokens: torch.Tensor, atom: int, grid: tuple[int, int], size: int) -> torch.Tensor:
    """One image's tokens `[N, D]` -> the atom's activation on the grid, bilinearly upsampled, `[S, S]`."""
    return upsample(atom_activation(sae, tokens, atom)[None], grid, size)[0]


def patch_box(patch: int, grid: tuple[int, int], size: int, context: int = 0) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) of a patch on the S x S view, widened by `context` cells each side.

    Near the border the box is shifted, not cut, so every crop has the same shape.
    """
    h, w = grid
    row, col = divmod(int(patch), w)
    cell_h, cell_w = size / h, size / w
    span_h, span_w = min(h, 2 * context + 1), min(w, 2 * context + 1)
    r0 = min(max(row - context, 0), h - span_h)
    c0 = min(max(col - context, 0), w - span_w)
    return (round(c0 * cell_w), round(r0 * cell_h), round((c0 + span_w) * cell_w), round((r0 + span_h) * cell_h))


def _outline(img: Image.Image, patch: int, grid: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """Box one patch of a square view; the line is an eighth of a cell wide (at least 1 px)."""
    width = max(1, round(img.size[0] / grid[1] / 8))
    x0, y0, x1, y1 = patch_box(patch, grid, img.size[0])
    ImageDraw.Draw(img).rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)  # PIL: x1 inclusive


def patch_crop(
    image: Image.Image,
    patch: int,
    grid: tuple[int, int],
    size: int,
    context: int = 1,
    out: int | None = None,
    outline: tuple[int, int, int] | None = None,
) -> Image.Image:
    """The patch and `context` cells around it, as cut from `image` resized to `size` x `size`.

    Returns an RGB PIL image, `out` x `out` when given (else the box's size in the S x S view);
    `outline` draws the patch's cell. The box is resampled straight from the image (one bicubic
    pass over the box, not a resize of the whole image then a crop): the same picture for a
    fraction of the work, which is what an atom switch spends its time on.
    """
    rgb = image.convert("RGB")
    x0, y0, x1, y1 = patch_box(patch, grid, size, context)
    side = (out, out) if out else (x1 - x0, y1 - y0)
    sx, sy = rgb.width / size, rgb.height / size
    crop = rgb.resize(side, Image.BICUBIC, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
    if outline is not None:
        h, w = grid
        row, col = divmod(int(patch), w)
        fx, fy = side[0] / (x1 - x0), side[1] / (y1 - y0)
        cell = (col * size / w - x0, row * size / h - y0, (col + 1) * size / w - x0, (row + 1) * size / h - y0)
        box = (round(cell[0] * fx), round(cell[1] * fy), round(cell[2] * fx) - 1, round(cell[3] * fy) - 1)
        width = max(1, round(size / w / 8 * fx))  # an eighth of a cell, as _outline draws it
        ImageDraw.Draw(crop).rectangle(box, outline=outline, width=width)
    return crop


def heatmap_overlay(
    image: Image.Image,
    heat: torch.Tensor | np.ndarray,
    vmax: float,
    alpha: float = 0.55,
    patch: int | None = None,
    grid: tuple[int, int] | None = None,
    outline: tuple[int, int, int] = OUT_MASK,
) -> Image.Image:
    """`heat` `[S, S]` over `image` on the shared colour scale [0, vmax], optionally boxing a patch."""
    values = heat.numpy() if torch.is_tensor(heat) else np.asarray(heat)
    img = overlay(image, values, alpha=alpha, vmin=0.0, vmax=max(float(vmax), 1e-12))
    if patch is not None and grid is not None:
        _outline(img, patch, grid, outline)
    return img


# -- gallery ------------------------------------------------------------------------------------


@dataclass
class GalleryRow:
    """One atom of the gallery: its label lines and its top patches (dicts from AtomIndex.entries)."""

    atom: int
    label: list[str]
    entries: list[dict[str, Any]]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def render_gallery(
    rows: list[GalleryRow],
    records: list[dict[str, Any]],
    sae: TopKSAE,
    tokens_of: Any,
    grid: tuple[int, int],
    size: int,
    *,
    title: str = "",
    tile: int = 96,
    context: int = 2,
    label_width: int = 190,
) -> Image.Image:
    """The paper's Figure 5 layout: one band per atom, a label, then per top patch a crop (top)
    and the atom's heatmap over the whole image (bottom), the patch boxed (red: in a defect mask).

    `tokens_of(image_index)` returns that auxiliary image's tokens `[N, D]`; heatmaps of one atom
    share the scale [0, its largest activation].
    """
    per_atom = max((len(r.entries) for r in rows), default=1)
    caption, head = 14, 28 if title else 0
    band = 2 * tile + caption + 8
    big, small = _font(14), _font(11)
    width = max(
        label_width + per_atom * (tile + 4) + 4,
        int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(title, font=big)) + 16,
    )
    canvas = Image.new("RGB", (width, head + len(rows) * band), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 7), title, fill=(235, 235, 235), font=big)
    images: dict[int, Image.Image] = {}
    for r, row in enumerate(rows):
        y = head + r * band
        for i, line in enumerate(row.label):
            draw.text(
                (8, y + 6 + 18 * i),
                line,
                fill=(235, 235, 235) if i == 0 else (190, 190, 200),
                font=big if i == 0 else small,
            )
        vmax = max((e["value"] for e in row.entries), default=1.0)
        for c, e in enumerate(row.entries):
            x = label_width + c * (tile + 4)
            if e["image"] not in images:
                images[e["image"]] = load_image(records[e["image"]]["image_path"])
            image = images[e["image"]]
            colour = IN_MASK if e["mask_fraction"] > 0 else OUT_MASK
            canvas.paste(patch_crop(image, e["patch"], grid, size, context, tile, outline=colour), (x, y))
            # Upsampled straight to the tile: same bilinear map, sampled at the tile's pixels.
            heat = atom_heatmap(sae, tokens_of(e["image"]), row.atom, grid, tile)
            canvas.paste(
                heatmap_overlay(image, heat, vmax, patch=e["patch"], grid=grid, outline=colour), (x, y + tile + 2)
            )
            draw.text(
                (x + 2, y + 2 * tile + 3), str(records[e["image"]]["category"])[:14], fill=(170, 170, 180), font=small
            )
    return canvas


def save_png(image: Image.Image, path: str | Path) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
