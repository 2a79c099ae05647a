"""Artefact flags: atoms that fire on where a patch is, or on patches that show nothing, rather than
on what an image shows; and the "dense" label (not an artefact flag).

Four statistics per atom, from the auxiliary set only (summaries.py accumulates them while it
streams the auxiliary tokens):

    border_share     share of its activation mass on its most border-loaded band of the patch grid:
                     the ring (all four sides) or one side alone, each BORDER_BAND deep (border_band
                     names which)
    position_share   share of its activation mass on its POSITION_TOP most-loaded grid cells
    image_share      share of auxiliary images on which it fires on at least one patch
    pixel_std        activation-weighted mean, over its firing patches, of each patch's grayscale
                     pixel std in the backbone's input view (0-1; texture.py)

A band is the outer tenth of the grid on a side (ceil(0.1 h) rows or columns, at least one: 2 on a
14 x 14 grid, 3 on a 28 x 28 one): the image edge, not one row of tokens, because the edge effect
need not sit on the outermost tokens (on the effnet-lite0 demo run an atom of the top border has no
mass on the first token row and most on rows 1-3; TensorFlow-style "same" padding, asymmetric, is
the likely cause) and photographs carry their vignetting and fixture edges a few percent deep. One
side counts alone as well as the whole ring: a top-border artefact (light from one side, a fixture
along one edge) puts little mass on the other three sides. The border flag asks for BORDER_LIFT
times more mass per band cell than per cell outside the band, on the ring or on any one side: a band
holding a fraction f of the cells is flagged at a share s >= f L / (f L + 1 - f). The position flag
asks for half the mass on 5% of the cells (ten times the even share). The blank flag asks for a
pixel_std at or below the 10th percentile of the pixel std of all auxiliary patches (the run's blank
floor, in the summaries' metadata): on average the atom fires on patches as flat as the flattest
tenth of the data, i.e. where the image shows nothing. The lift, the position share and the 10th
percentile were fixed before any atom's value was looked at; the band's depth and the one-side rule
were set after a one-cell ring missed a top-border atom the dashboard's ablation had exposed
(docs/dashboard.md gives the history and the check on a second run).

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
BORDER_BAND = 0.1  # each side band: the outer tenth of the grid
BANDS = ("ring", "top", "bottom", "left", "right")
POSITION_TOP = 0.05
POSITION_SHARE = 0.5
IMAGE_SHARE = 0.99
FLAGS = ("border", "fixed-position", "blank")
LABELS = ("dense",)
FLAG_RULE = (
    f"border: at least {BORDER_LIFT:g}x more activation mass per cell in a border band of the patch grid than per "
    f"cell outside it, the band being the outer {BORDER_BAND:.0%} of the grid on all four sides (the ring) or on "
    "any one side (on a 28 x 28 grid, 3 rows: a one-side band holds 11% of the cells and is flagged from 32% of "
    "the mass; the ring holds 38% and is flagged from 71%). "
    f"fixed-position: at least {POSITION_SHARE:.0%} of its mass on its {POSITION_TOP:.0%} most-loaded grid cells "
    "(ten times an even spread). "
    f"blank: its firing patches' activation-weighted mean pixel std is at or below the {BLANK_QUANTILE:.0%} quantile "
    "of the pixel std of all auxiliary patches (grayscale 0-1, the backbone's input view): it fires where the "
    "image shows nothing. "
    "All three are measured on the auxiliary set only. The lift, the shares and the quantile were fixed before "
    "any atom's value was seen; the band's depth and the one-side rule were revised once, after a one-cell ring "
    "missed an atom the ablation had shown to be a top-border artefact. "
    f"Label, not a flag: dense (fires on at least {IMAGE_SHARE:.0%} of "
    "auxiliary images; common, not an artefact: not counted as flagged, not dropped with the flagged atoms)."
)
MARK = "⚑"


def band_depth(cells: int) -> int:
    """Rows (columns) in one side's border band of a grid `cells` rows (columns) tall (wide)."""
    return max(1, math.ceil(BORDER_BAND * cells))


def border_bands(grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """{name: `[h * w]` bool} for the ring and each side's band, BORDER_BAND deep (row-major)."""
    h, w = grid
    dh, dw = band_depth(h), band_depth(w)
    sides = {name: np.zeros((h, w), dtype=bool) for name in BANDS}
    sides["top"][:dh] = True
    sides["bottom"][h - dh :] = True
    sides["left"][:, :dw] = True
    sides["right"][:, w - dw :] = True
    sides["ring"] = sides["top"] | sides["bottom"] | sides["left"] | sides["right"]
    return {name: band.reshape(-1) for name, band in sides.items()}


def border_threshold(grid: tuple[int, int], band: str = "ring") -> float:
    """The share of mass on `band` at which its mass per cell is BORDER_LIFT x the mass per cell outside it."""
    f = float(border_bands(grid)[band].mean())
    return 1.0 if f >= 1.0 else f * BORDER_LIFT / (f * BORDER_LIFT + 1.0 - f)


def _border(mass: np.ndarray, total: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(share on the band of largest lift `[M]`, that band's name `[M]`, flagged `[M]`) of `[M, N]` masses."""
    bands = border_bands(grid)
    shares = np.stack([mass[:, bands[b]].sum(axis=1) / total for b in BANDS], axis=1)  # [M, 5]
    frac = np.array([bands[b].mean() for b in BANDS])
    lift = (shares / frac) / np.maximum((1.0 - shares) / np.maximum(1.0 - frac, 1e-12), 1e-12)
    lift = np.where(frac >= 1.0, 0.0, np.nan_to_num(lift, nan=-1.0))
    best = lift.argmax(axis=1)
    rows = np.arange(len(mass))
    return shares[rows, best], np.array(BANDS, dtype=object)[best], lift[rows, best] >= BORDER_LIFT


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
    pixel_std `[M]` and the blank floor (None: blank not judged). Columns: border_share, border_band
    (ring, top, bottom, left or right; "" for atoms that never fire), position_share, image_share,
    pixel_std (NaN for atoms that never fire), flags (comma-separated names from FLAGS, "" when
    none), labels (from LABELS, "" when none).
    """
    mass = position_mass.double().numpy()
    total = mass.sum(axis=1)
    live = total > 0
    top = max(1, math.ceil(POSITION_TOP * mass.shape[1]))
    with np.errstate(invalid="ignore", divide="ignore"):
        border, band, border_hit = _border(mass, total, grid)
        border = np.where(live, border, np.nan)
        position = np.where(live, -np.sort(-mass, axis=1)[:, :top].sum(axis=1) / total, np.nan)
    images = np.where(live, image_count.double().numpy() / max(num_images, 1), np.nan)
    texture = np.full(len(mass), np.nan) if pixel_std is None else np.where(live, pixel_std.double().numpy(), np.nan)
    # at or below: where over a tenth of the patches are exactly flat the floor is 0, and so is such an atom
    blank = texture <= floor if floor is not None else np.zeros(len(mass), dtype=bool)  # NaN compares False
    hits = np.stack([border_hit & live, position >= POSITION_SHARE, blank], axis=1)
    flags = [",".join(name for name, hit in zip(FLAGS, row) if hit) for row in hits]
    labels = np.where(images >= IMAGE_SHARE, "dense", "")
    return pd.DataFrame(
        {
            "border_share": border,
            "border_band": np.where(live, band, ""),
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
