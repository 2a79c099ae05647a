"""Artefact flags: atoms that fire on where a patch is, or on every image, rather than on what it shows.

Three statistics per atom, from the auxiliary set only (summaries.py accumulates them while it
streams the auxiliary tokens):

    border_share     share of its activation mass on the border ring of the patch grid
                     (the outermost row and column on each side; ring_fraction of the cells)
    position_share   share of its activation mass on its POSITION_TOP most-loaded grid cells
    image_share      share of auxiliary images on which it fires on at least one patch

The thresholds are fixed by construction, before any target figure was looked at. An atom that
fires evenly over the grid puts ring_fraction r of its mass on the ring (52 of 196 cells on a
14 x 14 grid) and POSITION_TOP of it on any 5% of the cells. The border flag asks for BORDER_LIFT
times more mass per ring cell than per inner cell, i.e. border_share >= r L / (r L + 1 - r)
(0.59 on a 14 x 14 grid; a fixed share would not do, the ring is most of a small grid); the
position flag for half the mass on 5% of the cells (ten times the even share). An image share of
99% means the atom is present in all but one image in a hundred, whatever the image shows.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

BORDER_LIFT = 4.0
POSITION_TOP = 0.05
POSITION_SHARE = 0.5
IMAGE_SHARE = 0.99
FLAGS = ("border", "fixed-position", "every-image")
FLAG_RULE = (
    f"border: at least {BORDER_LIFT:g}x more activation mass per cell on the outermost ring of the patch grid "
    "than per inner cell (on a 14 x 14 grid: at least 59% of its mass on the ring, where an even spread puts 27%). "
    f"fixed-position: at least {POSITION_SHARE:.0%} of its mass on its {POSITION_TOP:.0%} most-loaded grid cells "
    "(ten times an even spread). "
    f"every-image: fires on at least {IMAGE_SHARE:.0%} of auxiliary images. "
    "All three are measured on the auxiliary set only; the thresholds were fixed by construction before any "
    "target figure was seen."
)
MARK = "⚑"


def ring_mask(grid: tuple[int, int]) -> np.ndarray:
    """`[h * w]` bool, True on the outermost row and column of each side of the grid (row-major)."""
    h, w = grid
    ring = np.zeros((h, w), dtype=bool)
    ring[[0, -1], :] = True
    ring[:, [0, -1]] = True
    return ring.reshape(-1)


def border_threshold(grid: tuple[int, int]) -> float:
    """The border_share at which the mass per ring cell is BORDER_LIFT x the mass per inner cell."""
    r = float(ring_mask(grid).mean())
    return 1.0 if r >= 1.0 else r * BORDER_LIFT / (r * BORDER_LIFT + 1.0 - r)


def flag_stats(
    position_mass: torch.Tensor, image_count: torch.Tensor, num_images: int, grid: tuple[int, int]
) -> pd.DataFrame:
    """Per-atom artefact statistics and flags.

    position_mass `[M, N]` (activation mass per grid cell), image_count `[M]` (images it fires on).
    Columns: border_share, position_share, image_share (NaN for atoms that never fire), flags
    (comma-separated names from FLAGS, "" when none).
    """
    mass = position_mass.double().numpy()
    total = mass.sum(axis=1)
    live = total > 0
    top = max(1, math.ceil(POSITION_TOP * mass.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        border = np.where(live, mass[:, ring_mask(grid)].sum(axis=1) / total, np.nan)
        position = np.where(live, -np.sort(-mass, axis=1)[:, :top].sum(axis=1) / total, np.nan)
    images = np.where(live, image_count.double().numpy() / max(num_images, 1), np.nan)
    hits = np.stack([border >= border_threshold(grid), position >= POSITION_SHARE, images >= IMAGE_SHARE], axis=1)
    flags = [",".join(name for name, hit in zip(FLAGS, row) if hit) for row in hits]
    return pd.DataFrame({"border_share": border, "position_share": position, "image_share": images, "flags": flags})


def flag_mark(flags: object) -> str:
    """A visible mark for tables and labels: ' ⚑ border' (empty for no flags, None or NaN)."""
    if not isinstance(flags, str) or not flags:
        return ""
    return f" {MARK} " + flags.replace(",", ", ")


def flagged_atoms(stats: pd.DataFrame) -> list[int]:
    """Atom ids with at least one flag in an atom statistics table (none without a flags column)."""
    if "flags" not in stats.columns:
        return []
    hit = stats["flags"].map(lambda f: isinstance(f, str) and bool(f))
    return [int(a) for a in stats.loc[hit, "atom"]]
