"""One atom up close: its top auxiliary patches as pictures, its category profile, its activation sample."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from spg_core.atoms.visual import IN_MASK, OUT_MASK, atom_activation, atom_heatmap, heatmap_overlay, patch_crop
from spg_core.images import load_image


@dataclass
class AtomTile:
    """One top-activating auxiliary patch of an atom, ready to show."""

    crop: Image.Image  # the patch with context, its cell boxed (red: inside a defect mask)
    heat: Image.Image  # the atom's activation over the whole image, patch boxed
    caption: str


def atom_tiles(
    index: Any,
    records: list[dict[str, Any]],
    sae: Any,
    store: Any,
    atom: int,
    *,
    count: int = 8,
    context: int = 2,
    tile: int = 160,
) -> list[AtomTile]:
    """The atom's `count` top auxiliary patches (from its AtomIndex) as crop + heatmap pictures.

    Heatmaps of one atom share the scale [0, its largest activation], as in the paper's Figure 5.
    """
    entries = index.entries(atom)[:count]
    grid, size = tuple(index.meta["grid"]), int(index.meta["image_size"])
    vmax = max((e["value"] for e in entries), default=1.0)
    tiles = []
    for e in entries:
        record = records[e["image"]]
        image = load_image(record["image_path"])
        colour = IN_MASK if e["mask_fraction"] > 0 else OUT_MASK
        # drawn at the tile's size: the map upsampled to it and the image resized once
        heat = atom_heatmap(sae, store.tokens([e["image"]])[0], atom, grid, tile)
        small = image.convert("RGB").resize((tile, tile), Image.BICUBIC)
        tiles.append(
            AtomTile(
                crop=patch_crop(image, e["patch"], grid, size, context, tile, outline=colour),
                heat=heatmap_overlay(small, heat, vmax, patch=e["patch"], grid=grid, outline=colour),
                caption=f"{record['category']} · {record['defect']} · s={e['value']:.2f}",
            )
        )
    return tiles


def category_profile(index: Any, atom: int) -> pd.Series:
    """Mean activation of `atom` per auxiliary category (its category histogram), from the index totals."""
    names = list(index.meta.get("categories") or [])
    mass = index.counts.category_mass[atom].double().numpy()
    tokens = index.counts.category_tokens.double().numpy()
    values = mass / np.maximum(tokens, 1)
    return pd.Series(values, index=names or [str(i) for i in range(len(values))], name="mean activation")


def atom_activation_sample(
    sae: Any, store: Any, atom: int, *, include: Iterable[int] = (), flop_budget: float = 2e10
) -> tuple[np.ndarray, int]:
    """The atom's non-zero activations over auxiliary images, the data of its activation histogram.

    Every image when encoding them all fits `flop_budget` (T * M * D multiply-adds), else an evenly
    spaced sample plus the images in `include` (its top-activating ones, so a rare atom still shows).
    Returns (activations > 0, number of images encoded).
    """
    n = store.num_images
    per_image = store.num_patches * sae.width * sae.dim
    budget = max(1, int(flop_budget // max(per_image, 1)))
    picks = set(int(i) for i in include if 0 <= int(i) < n)
    if budget >= n:
        picks = set(range(n))
    elif budget > len(picks):
        picks |= set(np.linspace(0, n - 1, num=budget - len(picks)).round().astype(int).tolist())
    values = [atom_activation(sae, store.tokens([i])[0], atom).numpy() for i in sorted(picks)]
    flat = np.concatenate(values) if values else np.zeros(0)
    return flat[flat > 0], len(picks)


BAND_NAMES = ("lowest quarter", "second quarter", "third quarter", "top quarter")


def band_label(band: int, edges: np.ndarray) -> str:
    """'second quarter: 0.12 <= s < 0.35' for band `band` of an atom's band limits `edges` `[bands + 1]`."""
    lo, hi = float(edges[band]), float(edges[band + 1])
    name = BAND_NAMES[band] if band < len(BAND_NAMES) else f"band {band + 1}"
    upper = "" if not np.isfinite(hi) else f" < {hi:.3g}"
    return f"{name} of its auxiliary activations: {lo:.3g} <= s{upper}"


def activation_histogram(hist: np.ndarray, bin_edges: np.ndarray) -> pd.DataFrame:
    """The filled bins of one atom's log10-binned histogram `[B]`: rows lo, hi, count (edges `[B + 1]`)."""
    filled = np.flatnonzero(hist)
    if not len(filled):
        return pd.DataFrame(columns=["lo", "hi", "count"])
    span = slice(filled[0], filled[-1] + 1)
    return pd.DataFrame({"lo": bin_edges[:-1][span], "hi": bin_edges[1:][span], "count": hist[span].astype(int)})


def neighbour_frame(
    ids: np.ndarray, values: np.ndarray, column: str, labels: dict[int, str] | None = None
) -> pd.DataFrame:
    """Filled neighbour slots (id >= 0) as rows: atom, `column` (the score), tag (with any flag mark)."""
    keep = ids >= 0
    atoms = ids[keep].astype(int)
    return pd.DataFrame(
        {"atom": atoms, column: values[keep].astype(float), "tag": [(labels or {}).get(int(a), "") for a in atoms]}
    )


def sample_caption(record: dict[str, Any], value: float) -> str:
    return f"{record['category']} · {record['defect']} · s={value:.2f}"
