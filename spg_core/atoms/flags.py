"""Artefact flags: atoms that fire on where a patch is, or on patches that show nothing, rather than
on what an image shows; and the "dense" label (not an artefact flag).

Four statistics per atom, from the auxiliary set only (summaries.py accumulates them while it
streams the auxiliary tokens):

    border_share     share of its activation mass on the border ring of the patch grid
                     (the outermost row and column on each side; ring_fraction of the cells)
    position_share   share of its activation mass on its POSITION_TOP most-loaded grid cells
    image_share      share of auxiliary images on which it fires on at least one patch
    pixel_std        activation-weighted mean, over its firing patches, of each patch's grayscale
                     pixel std in the backbone's input view (0-1; texture.py)

The thresholds are fixed by construction, before any target figure was looked at. An atom that
fires evenly over the grid puts ring_fraction r of its mass on the ring (52 of 196 cells on a
14 x 14 grid) and POSITION_TOP of it on any 5% of the cells. The border flag asks for BORDER_LIFT
times more mass per ring cell than per inner cell, i.e. border_share >= r L / (r L + 1 - r)
(0.59 on a 14 x 14 grid; a fixed share would not do, the ring is most of a small grid); the
position flag for half the mass on 5% of the cells (ten times the even share). The blank flag
asks for a pixel_std at or below the 10th percentile of the pixel std of all auxiliary patches (the
run's blank floor, in the summaries' metadata): on average the atom fires on patches as flat as
the flattest tenth of the data, i.e. where the image shows nothing. The 10th percentile was fixed
before any atom's value was looked at, as a conventional low tail.

An image share of 99% makes an atom "dense": present in all but one image in a hundred. That is
a property, not a sign of an artefact (a texture atom of a textured product is dense), so it is a
label shown beside the flags (the labels column), not a flag: it does not count as flagged and
"drop every flagged atom" keeps it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .texture import BLANK_QUANTILE

BORDER_LIFT = 4.0
POSITION_TOP = 0.05
POSITION_SHARE = 0.5
IMAGE_SHARE = 0.99
FLAGS = ("border", "fixed-position", "blank")
LABELS = ("dense",)
FLAG_RULE = (
    f"border: at least {BORDER_LIFT:g}x more activation mass per cell on the outermost ring of the patch grid "
    "than per inner cell (on a 14 x 14 grid: at least 59% of its mass on the ring, where an even spread puts 27%). "
    f"fixed-position: at least {POSITION_SHARE:.0%} of its mass on its {POSITION_TOP:.0%} most-loaded grid cells "
    "(ten times an even spread). "
    f"blank: its firing patches' activation-weighted mean pixel std is at or below the {BLANK_QUANTILE:.0%} quantile "
    "of the pixel std of all auxiliary patches (grayscale 0-1, the backbone's input view): it fires where the "
    "image shows nothing. "
    "All three are measured on the auxiliary set only; the thresholds were fixed by construction before any "
    f"target figure or atom's value was seen. Label, not a flag: dense (fires on at least {IMAGE_SHARE:.0%} of "
    "auxiliary images; common, not an artefact: not counted as flagged, not dropped with the flagged atoms)."
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
    position_mass: torch.Tensor,
    image_count: torch.Tensor,
    num_images: int,
    grid: tuple[int, int],
    pixel_std: torch.Tensor | None = None,
    floor: float | None = None,
) -> pd.DataFrame:
    """Per-atom artefact statistics, flags and labels.

    position_mass `[M, N]` (activation mass per grid cell), image_count `[M]` (images it fires on),
    pixel_std `[M]` and the blank floor (None: blank not judged). Columns: border_share,
    position_share, image_share, pixel_std (NaN for atoms that never fire), flags (comma-separated
    names from FLAGS, "" when none), labels (from LABELS, "" when none).
    """
    mass = position_mass.double().numpy()
    total = mass.sum(axis=1)
    live = total > 0
    top = max(1, math.ceil(POSITION_TOP * mass.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        border = np.where(live, mass[:, ring_mask(grid)].sum(axis=1) / total, np.nan)
        position = np.where(live, -np.sort(-mass, axis=1)[:, :top].sum(axis=1) / total, np.nan)
    images = np.where(live, image_count.double().numpy() / max(num_images, 1), np.nan)
    texture = np.full(len(mass), np.nan) if pixel_std is None else np.where(live, pixel_std.double().numpy(), np.nan)
    # at or below: where over a tenth of the patches are exactly flat the floor is 0, and so is such an atom
    blank = texture <= floor if floor is not None else np.zeros(len(mass), dtype=bool)  # NaN compares False
    hits = np.stack([border >= border_threshold(grid), position >= POSITION_SHARE, blank], axis=1)
    flags = [",".join(name for name, hit in zip(FLAGS, row) if hit) for row in hits]
    labels = np.where(images >= IMAGE_SHARE, "dense", "")
    return pd.DataFrame(
        {
            "border_share": border,
            "position_share": position,
            "image_share": images,
            "pixel_std": texture,
            "flags": flags,
            "labels": labels,
        }
    )


def flag_mark(flags: object, labels: object = "") -> str:
    """A visible mark for tables and labels: ' ⚑ border', ' · dense', ' ⚑ blank · dense' (empty for no
    flags and labels, None or NaN)."""
    mark = f" {MARK} " + flags.replace(",", ", ") if isinstance(flags, str) and flags else ""
    return mark + (f" · {labels.replace(',', ', ')}" if isinstance(labels, str) and labels else "")


def flagged_atoms(stats: pd.DataFrame) -> list[int]:
    """Atom ids with at least one flag in an atom statistics table (none without a flags column)."""
    if "flags" not in stats.columns:
        return []
    hit = stats["flags"].map(lambda f: isinstance(f, str) and bool(f))
    return [int(a) for a in stats.loc[hit, "atom"]]
