"""Per-atom summaries, precomputed with the atom index so every per-atom view only reads them.

Two streaming passes over the auxiliary tokens and one over the target tokens, chunk by chunk
(memory: the `[M, ...]` running state plus one chunk, never `[T, M]` codes):

    auxiliary pass 1   activation histogram `[M, B]` (log10 bins), activation mass per grid cell
                       `[M, N]`, images fired on `[M]`, co-firing counts `[M, M]` (float64: 2 MiB
                       at M = 512, 128 MiB at M = 4096), activation-weighted patch pixel std `[M]`
                       (the "blank" flag; texture.py reads the auxiliary images once for it, into
                       `[n_images, N]` float16: 1.5 KiB per image on a 28 x 28 grid)
    auxiliary pass 2   random firing patches per activation band (the auxiliary quartiles, read off
                       the histogram at its bin edges) and over all firing patches
    target pass        histogram, top-P patches and the same band samples, bands from the auxiliary set

Random samples are the S firing (token, atom) pairs of largest hash priority (a fixed integer hash
of token id and atom), so they are uniform, deterministic and independent of the chunking. The
co-activating neighbours rank atoms by Jaccard over firing patches, C_ij / (n_i + n_j - C_ij);
the decoder neighbours by cosine of decoder columns.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import load_tensors, save_tensors
from ..errors import SPGError
from ..sae import TopKSAE
from ..store import TokenStore
from .index import TokenChunk, TopPAccumulator, _moved, default_chunk_tokens, store_chunks
from .texture import BLANK_QUANTILE, blank_floor, patch_pixel_std

VERSION = 2  # 2: pixel_std and the blank floor (the blank flag)
LOG_LO, LOG_HI, BIN_WIDTH = -4.0, 3.0, 0.05  # log10 activation bins: 140 of 0.05 decade (12% apart)
QUANTILES = (0.25, 0.5, 0.75)  # interior band edges: four bands, the auxiliary quartiles
SAMPLES = 6  # patches kept per band and in the random firing sample
NEIGHBOURS = 10
PAIR_BATCH = 4096  # tokens per co-firing count (B k^2 pairs)
SETS = ("aux", "target")


def bin_edges() -> np.ndarray:
    """`[B + 1]` activation values at the log10 bin edges (the first bin also takes values below it)."""
    return 10.0 ** np.arange(LOG_LO, LOG_HI + BIN_WIDTH / 2, BIN_WIDTH)


def num_bands() -> int:
    return len(QUANTILES) + 1


@dataclass
class SetSummary:
    """One token set's summaries. hist `[M, B]` int64 firing counts per bin; samples_* `[M, G, S]`
    (G = bands + 1, the last group: any firing patch) with value, image (-1: empty) and patch;
    top_* `[M, P]` (target set only: the auxiliary top patches are the AtomIndex)."""

    hist: torch.Tensor
    samples_value: torch.Tensor
    samples_image: torch.Tensor
    samples_patch: torch.Tensor
    top_value: torch.Tensor | None = None
    top_image: torch.Tensor | None = None
    top_patch: torch.Tensor | None = None

    def samples(self, atom: int, group: int) -> list[dict[str, float | int]]:
        """Filled sample slots of one atom's band `group` (bands, then `num_bands()`: any firing)."""
        keep = self.samples_image[atom, group] >= 0
        return [
            {"image": int(i), "patch": int(p), "value": float(v)}
            for i, p, v in zip(
                self.samples_image[atom, group][keep],
                self.samples_patch[atom, group][keep],
                self.samples_value[atom, group][keep],
            )
        ]

    def top(self, atom: int) -> list[dict[str, float | int]]:
        if self.top_image is None:
            return []
        keep = self.top_image[atom] >= 0
        return [
            {"image": int(i), "patch": int(p), "value": float(v)}
            for i, p, v in zip(self.top_image[atom][keep], self.top_patch[atom][keep], self.top_value[atom][keep])
        ]


@dataclass
class AtomSummaries:
    """edges `[M, bands + 1]` band limits (0 and inf at the ends), position_mass `[M, N]`,
    image_count `[M]`, pixel_std `[M]` (activation-weighted mean pixel std of its firing auxiliary
    patches; NaN where it never fires or the images could not be read),
    coact_atoms / coact_jaccard `[M, K]`, decoder_atoms / decoder_cosine `[M, K]`
    (-1 / NaN where fewer exist), per set a SetSummary (target: None when the run has no target store)."""

    edges: torch.Tensor
    position_mass: torch.Tensor
    image_count: torch.Tensor
    coact_atoms: torch.Tensor
    coact_jaccard: torch.Tensor
    decoder_atoms: torch.Tensor
    decoder_cosine: torch.Tensor
    sets: dict[str, SetSummary]
    meta: dict[str, Any] = field(default_factory=dict)
    pixel_std: torch.Tensor | None = None


# -- streaming pieces ---------------------------------------------------------------------------


def _codes(chunks: Iterable[TokenChunk], sae: TopKSAE, num_patches: int):
    """(chunk, global token ids `[T]`, values `[T, k]`, atoms `[T, k]`) of each chunk, encoded."""
    for chunk in chunks:
        tokens = chunk.tokens if torch.is_tensor(chunk.tokens) else torch.from_numpy(np.array(chunk.tokens))
        x = tokens.reshape(-1, tokens.shape[-1]).float()
        code = sae.encode(x)
        first = chunk.start_image * num_patches
        yield chunk, torch.arange(first, first + x.shape[0]), code.values, code.indices


def value_bins(values: torch.Tensor) -> torch.Tensor:
    """Bin index of each activation (`[L]` -> `[L]` long, clamped into the histogram)."""
    b = torch.floor((torch.log10(values.double().clamp_min(1e-30)) - LOG_LO) / BIN_WIDTH).long()
    return b.clamp(0, len(bin_edges()) - 2)


def band_edges(hist: torch.Tensor) -> torch.Tensor:
    """`[M, B]` histogram -> `[M, bands + 1]` band limits: 0, the bin edges where the cumulative
    share first reaches each of QUANTILES, inf. A sample with value v is in band b when
    edges[b] <= v < edges[b + 1]."""
    upper = torch.from_numpy(bin_edges()[1:]).double()
    cum = hist.double().cumsum(1)
    total = cum[:, -1:].clamp_min(1)
    inner = [
        upper[torch.searchsorted(cum / total, torch.full_like(total, q)).clamp(max=len(upper) - 1)] for q in QUANTILES
    ]
    m = hist.shape[0]
    return torch.cat([torch.zeros(m, 1, dtype=torch.float64), *inner, torch.full((m, 1), torch.inf)], dim=1)


def band_of(values: torch.Tensor, atoms: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Band index `[L]` of each (value, atom) pair under `edges` `[M, bands + 1]`."""
    return (values.double()[:, None] >= edges[atoms][:, 1:-1]).sum(1)


def priority(token: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random number in (0, 1] per (token, atom) pair (an integer hash), `[L]`."""
    h = (token * 0x9E3779B1 + atoms * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    h = ((h ^ (h >> 15)) * 0x2C1B3C6D) & 0xFFFFFFFF
    h = ((h ^ (h >> 12)) * 0x297A2D39) & 0xFFFFFFFF
    h = h ^ (h >> 15)
    return (h.double() + 1.0) / 2.0**32


class BandSampler:
    """Random firing patches per (atom, band) and per atom, `[M, bands + 1, S]`."""

    def __init__(self, width: int, edges: torch.Tensor):
        self.width, self.edges, self.groups = width, edges, num_bands() + 1
        self.acc = TopPAccumulator(width * self.groups, SAMPLES, torch.device("cpu"))

    def update(self, token: torch.Tensor, values: torch.Tensor, atoms: torch.Tensor) -> None:
        """Firing pairs of one chunk: token ids `[T]`, values and atoms `[T, k]` (tokens in id order)."""
        fire = values > 0
        v, a = values[fire], atoms[fire]
        t = token[:, None].expand_as(values)[fire]
        band = band_of(v, a, self.edges)
        group = torch.cat([a * self.groups + band, a * self.groups + num_bands()])
        tt, vv = torch.cat([t, t]), torch.cat([v, v])
        # priorities differ between a pair's band slot and its "any" slot only through the group id
        self.acc.update(priority(tt, group)[:, None].float(), group[:, None], tt, vv)

    def result(self, num_patches: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (self.width, self.groups, SAMPLES)
        token = self.acc.token
        image = torch.where(token >= 0, token // num_patches, -1).reshape(shape)
        patch = torch.where(token >= 0, token % num_patches, -1).reshape(shape)
        return self.acc.extra.reshape(shape), image, patch


def _cofiring(counts: torch.Tensor, atoms: torch.Tensor, fire: torch.Tensor) -> None:
    """Add one chunk's co-firing counts to `[M, M]` `counts`: every pair of firing atoms of a token
    (T k^2 pairs, counted with bincount; a dense `[T, M]` one-hot product would cost T M^2)."""
    m = counts.shape[0]
    for lo in range(0, atoms.shape[0], PAIR_BATCH):
        a = torch.where(fire[lo : lo + PAIR_BATCH], atoms[lo : lo + PAIR_BATCH], m)  # not firing -> slot m
        pairs = (a[:, :, None] * (m + 1) + a[:, None, :]).reshape(-1)
        counts += torch.bincount(pairs, minlength=(m + 1) ** 2).reshape(m + 1, m + 1)[:m, :m]


@torch.no_grad()
def aux_first_pass(
    chunks: Iterable[TokenChunk], sae: TopKSAE, num_patches: int, patch_std: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """hist `[M, B]`, position_mass `[M, N]`, image_count `[M]`, cofire `[M, M]` over the auxiliary set;
    with `patch_std` `[n_images, N]`, also std_mass `[M]`: sum over firing patches of activation x std."""
    m, bins = sae.width, len(bin_edges()) - 1
    out = {
        "hist": torch.zeros(m * bins, dtype=torch.long),
        "position_mass": torch.zeros(m * num_patches, dtype=torch.float64),
        "image_count": torch.zeros(m, dtype=torch.long),
        "cofire": torch.zeros(m, m, dtype=torch.long),
        "std_mass": torch.zeros(m, dtype=torch.float64),
    }
    flat_std = None if patch_std is None else patch_std.reshape(-1)
    for _, token, values, atoms in _codes(chunks, sae, num_patches):
        fire = values > 0
        v, a = values[fire], atoms[fire]
        t = token[:, None].expand_as(values)[fire]
        out["hist"] += torch.bincount(a * bins + value_bins(v), minlength=m * bins)
        out["position_mass"].index_add_(0, a * num_patches + t % num_patches, v.double())
        per_image = torch.unique((t // num_patches) * m + a)
        out["image_count"] += torch.bincount(per_image % m, minlength=m)
        if flat_std is not None:
            out["std_mass"].index_add_(0, a, v.double() * flat_std[t].double())
        _cofiring(out["cofire"], atoms, fire)
    out["hist"] = out["hist"].reshape(m, bins)
    out["position_mass"] = out["position_mass"].reshape(m, num_patches)
    return out


@torch.no_grad()
def sample_pass(
    chunks: Iterable[TokenChunk], sae: TopKSAE, num_patches: int, edges: torch.Tensor, *, top_p: int = 0
) -> SetSummary:
    """Band samples (and with `top_p`, the histogram and the top-P patches) of one token set."""
    m, bins = sae.width, len(bin_edges()) - 1
    sampler = BandSampler(m, edges)
    top = TopPAccumulator(m, top_p, torch.device("cpu")) if top_p else None
    hist = torch.zeros(m * bins, dtype=torch.long)
    for _, token, values, atoms in _codes(chunks, sae, num_patches):
        sampler.update(token, values, atoms)
        if top is not None:
            fire = values > 0
            hist += torch.bincount(atoms[fire] * bins + value_bins(values[fire]), minlength=m * bins)
            top.update(values, atoms, token, torch.zeros(token.shape[0]))
    summary = SetSummary(hist.reshape(m, bins), *sampler.result(num_patches))
    if top is not None:
        filled = top.token >= 0
        summary.top_value = top.values
        summary.top_image = torch.where(filled, top.token // num_patches, -1)
        summary.top_patch = torch.where(filled, top.token % num_patches, -1)
    return summary


def neighbours(score: torch.Tensor, k: int = NEIGHBOURS) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k best other columns of a `[M, M]` score (self and NaN excluded): (ids, scores) `[M, k]`,
    id -1 and NaN where a row has fewer than k finite entries."""
    s = score.double().clone()
    s.fill_diagonal_(float("nan"))
    s = torch.nan_to_num(s, nan=-torch.inf)
    top = s.topk(min(k, s.shape[1] - 1), dim=1)
    ok = torch.isfinite(top.values)
    return torch.where(ok, top.indices, -1), torch.where(ok, top.values, torch.nan)


def jaccard(cofire: torch.Tensor) -> torch.Tensor:
    """`[M, M]` co-firing counts (diagonal: each atom's firing count) -> Jaccard; NaN where neither fires."""
    c = cofire.double()
    n = c.diagonal()
    union = n[:, None] + n[None, :] - c
    return torch.where(union > 0, c / union.clamp_min(1), torch.nan)


def build_summaries(
    sae: TopKSAE, aux: TokenStore, target: TokenStore | None = None, *, top_p: int = 16, chunk_tokens: int | None = None
) -> AtomSummaries:
    """Every per-atom summary of `sae` over the auxiliary store (and the target store when given), on the CPU."""
    t0 = time.perf_counter()
    cpu = torch.device("cpu")
    if next(sae.parameters()).device != cpu:  # a CPU copy: the caller's model stays where it was
        sae = _moved(sae, cpu)
    chunk = chunk_tokens or default_chunk_tokens(sae, cpu)
    try:
        patch_std = patch_pixel_std(aux.images, aux.image_size, aux.grid)
        texture = {"blank_floor": blank_floor(patch_std), "blank_quantile": BLANK_QUANTILE}
    except SPGError as exc:  # images moved or deleted: every other summary still stands, blank is not judged
        patch_std, texture = None, {"blank_floor": None, "pixel_std_missing": str(exc)}
    first = aux_first_pass(store_chunks(aux, chunk, with_masks=False), sae, aux.num_patches, patch_std)
    mass = first["position_mass"].sum(1)
    pixel_std = torch.where(mass > 0, first["std_mass"] / mass.clamp_min(1e-30), torch.nan)
    if patch_std is None:
        pixel_std = torch.full_like(pixel_std, torch.nan)
    edges = band_edges(first["hist"])
    sets = {"aux": sample_pass(store_chunks(aux, chunk, with_masks=False), sae, aux.num_patches, edges)}
    sets["aux"].hist = first["hist"]
    if target is not None:
        if target.dim != sae.dim:
            raise SPGError("the target tokens and the SAE differ in dimension", path=str(target.root))
        sets["target"] = sample_pass(
            store_chunks(target, chunk, with_masks=False), sae, target.num_patches, edges, top_p=top_p
        )
    atoms_unit = sae.atoms().detach().float()
    atoms_unit = atoms_unit / atoms_unit.norm(dim=0, keepdim=True).clamp_min(1e-12)
    co_ids, co_val = neighbours(jaccard(first["cofire"]))
    dec_ids, dec_val = neighbours(atoms_unit.t() @ atoms_unit)
    meta = {
        "version": VERSION,
        "grid": list(aux.grid),
        "num_images": {"aux": aux.num_images, **({"target": target.num_images} if target is not None else {})},
        "num_patches": aux.num_patches,
        "log10_bins": [LOG_LO, LOG_HI, BIN_WIDTH],
        "quantiles": list(QUANTILES),
        "samples": SAMPLES,
        "aux_store": str(aux.root),
        "target_store": None if target is None else str(target.root),
        **texture,
        "seconds": time.perf_counter() - t0,
    }
    return AtomSummaries(
        edges, first["position_mass"].float(), first["image_count"], co_ids, co_val.float(), dec_ids,
        dec_val.float(), sets, meta, pixel_std.float(),
    )  # fmt: skip


# -- persistence --------------------------------------------------------------------------------

_TOP = ("coact_atoms", "coact_jaccard", "decoder_atoms", "decoder_cosine", "edges", "position_mass", "image_count")
_SET = ("hist", "samples_value", "samples_image", "samples_patch", "top_value", "top_image", "top_patch")


def save_summaries(summaries: AtomSummaries, path: str | Path) -> None:
    """`path` (.safetensors): every tensor, the metadata (with VERSION) in its header."""
    tensors = {name: getattr(summaries, name) for name in _TOP}
    if summaries.pixel_std is not None:
        tensors["pixel_std"] = summaries.pixel_std
    for which, s in summaries.sets.items():
        tensors |= {f"{which}.{n}": getattr(s, n) for n in _SET if getattr(s, n) is not None}
    save_tensors(path, tensors, {"summaries": summaries.meta})


def load_summaries(path: str | Path) -> AtomSummaries:
    """Read `save_summaries`' file; SPGError when missing, damaged or of another VERSION."""
    tensors, meta = load_tensors(path, what="atom summaries")
    info = meta.get("summaries")
    if not isinstance(info, dict) or info.get("version") != VERSION or set(_TOP) - tensors.keys():
        raise SPGError(
            f"atom summaries are of another version or incomplete (this code writes version {VERSION})",
            path=str(path),
            fix="rebuild them with `spg atoms --run DIR` (the dashboard also rebuilds them on first use)",
        )
    sets = {
        which: SetSummary(**{n: tensors.get(f"{which}.{n}") for n in _SET})
        for which in SETS
        if f"{which}.hist" in tensors
    }
    return AtomSummaries(**{n: tensors[n] for n in _TOP}, sets=sets, meta=info, pixel_std=tensors.get("pixel_std"))
