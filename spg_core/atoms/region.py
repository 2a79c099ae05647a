"""Region -> atoms: which atoms fire inside a region of one image, and which push it towards 'anomalous'.

A region is a set of patches `[N]` bool (from a pixel box, a mask or clicked cells). Two rankings
answer two questions:

- "what does the model see here": SAE activations s_j (the TopK codes) averaged over the region's
  patches, ranked by their excess over the average on the rest of the image (an atom that fires
  everywhere, e.g. on the background texture, says nothing about this region);
- "why is this flagged": each atom's exact share of l_a - l_n (ranking.attribute, the same split
  the anomaly maps are built from), averaged over the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SPGError
from ..sae import TopKSAE
from .ranking import Attribution


def box_patches(box: tuple[float, float, float, float], grid: tuple[int, int], size: int) -> np.ndarray:
    """Patches `[N]` bool whose cell overlaps the pixel box (x0, y0, x1, y1) on the S x S view."""
    h, w = grid
    x0, y0, x1, y1 = box
    x0, x1 = sorted((float(x0), float(x1)))
    y0, y1 = sorted((float(y0), float(y1)))
    cell_h, cell_w = size / h, size / w
    rows = (np.arange(h) + 1) * cell_h > y0
    rows &= np.arange(h) * cell_h < y1
    cols = (np.arange(w) + 1) * cell_w > x0
    cols &= np.arange(w) * cell_w < x1
    return (rows[:, None] & cols[None, :]).reshape(-1)


def cell_patches(rows: tuple[int, int], cols: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Patches `[N]` bool of the grid cells rows[0]..rows[1] x cols[0]..cols[1] (inclusive, clamped)."""
    h, w = grid
    r0, r1 = sorted(int(min(max(r, 0), h - 1)) for r in rows)
    c0, c1 = sorted(int(min(max(c, 0), w - 1)) for c in cols)
    out = np.zeros((h, w), dtype=bool)
    out[r0 : r1 + 1, c0 : c1 + 1] = True
    return out.reshape(-1)


def mask_patches(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Patches `[N]` bool whose cell holds any pixel of the `[S, S]` mask."""
    h, w = grid
    m = np.asarray(mask, dtype=bool)
    s = m.shape[0]
    if s % h or m.shape[1] % w:
        raise SPGError(f"mask of {m.shape} does not divide into a {h} x {w} grid")
    return m.reshape(h, s // h, w, m.shape[1] // w).any(axis=(1, 3)).reshape(-1)


@dataclass
class RegionAtoms:
    """The two rankings for one region, each a list of rows (largest first).

    activation rows: {"atom", "inside" (mean s_j over the region), "outside" (mean elsewhere)};
    contribution rows: {"atom", "guide", "contribution" (mean share of l_a - l_n over the region)}.
    """

    patches: int
    activation: list[dict[str, float | int | str]]
    contribution: list[dict[str, float | int | str]]


@dataclass
class ImageAtoms:
    """What every region of one image is ranked from, computed once per image: SAE codes `[N, M]`,
    the net contributions to l_a - l_n `[N, U]` of atoms `[U]` (Attribution.net), and the atoms
    each guide weights. A region query is then two masked means."""

    codes: torch.Tensor
    atoms: torch.Tensor
    net: torch.Tensor
    in_a: frozenset[int]
    in_n: frozenset[int]


@torch.no_grad()
def image_atoms(sae: TopKSAE, tokens: torch.Tensor, attr: Attribution, image: int = 0) -> ImageAtoms:
    """ImageAtoms of one image's tokens `[N, D]` and its attribution (image `image` of `attr`)."""
    codes = sae.encode_dense(tokens.to(next(sae.parameters()).device).float()).cpu()  # [N, M]
    atoms, net = attr.net()  # [U], [B, N, U]
    return ImageAtoms(codes, atoms, net[image], frozenset(attr.atoms_a.tolist()), frozenset(attr.atoms_n.tolist()))


def _inside(region: np.ndarray) -> torch.Tensor:
    inside = torch.as_tensor(np.asarray(region, dtype=bool))
    if not inside.any():
        raise SPGError("the region holds no patch", fix="draw a larger box")
    return inside


def activation_ranking(codes: torch.Tensor, region: np.ndarray, k: int = 8) -> list[dict[str, float | int]]:
    """The k atoms whose mean activation inside `region` `[N]` most exceeds their mean elsewhere in the
    image, from one image's SAE codes `[N, M]` (only atoms that fire inside; a whole-image region ranks
    by the mean alone)."""
    inside = _inside(region)
    mean_in = codes[inside].mean(0)
    mean_out = codes[~inside].mean(0) if (~inside).any() else torch.zeros_like(mean_in)
    excess = torch.where(mean_in > 0, mean_in - mean_out, torch.full_like(mean_in, -float("inf")))
    top = excess.topk(min(k, int((mean_in > 0).sum())))
    return [{"atom": int(j), "inside": float(mean_in[j]), "outside": float(mean_out[j])} for j in top.indices.tolist()]


def contribution_ranking(found: ImageAtoms, region: np.ndarray, k: int = 8) -> list[dict[str, float | int | str]]:
    """The k atoms whose mean contribution to l_a - l_n inside `region` `[N]` is largest (positive only)."""
    mean = found.net[_inside(region)].mean(0)
    top = mean.topk(min(k, mean.numel()))
    rows = []
    for i, v in zip(top.indices.tolist(), top.values.tolist()):
        if v <= 0:
            break
        j = int(found.atoms[i])
        guide = "both" if j in found.in_a and j in found.in_n else ("anomaly" if j in found.in_a else "normal")
        rows.append({"atom": j, "guide": guide, "contribution": float(v)})
    return rows


def rank_region(found: ImageAtoms, region: np.ndarray, k: int = 8) -> RegionAtoms:
    """Both rankings for `region` `[N]` of an image whose ImageAtoms are computed."""
    return RegionAtoms(
        int(np.asarray(region).sum()),
        activation_ranking(found.codes, region, k),
        contribution_ranking(found, region, k),
    )


def region_atoms(sae: TopKSAE, tokens: torch.Tensor, attr: Attribution, region: np.ndarray, k: int = 8) -> RegionAtoms:
    """Both rankings for one image's tokens `[N, D]`, its attribution (one image) and `region` `[N]`."""
    return rank_region(image_atoms(sae, tokens, attr), region, k)
