"""`builtin`: a weight-free backbone, so the demo and the tests run anywhere with no download.

It is not a neural network; it is a fixed, documented, per-image feature extractor (no
learned weights, no randomness), frozen at `builtin-v6`: it is a fallback, not a research
object, and is no longer tuned. Nothing category-specific is built in: what makes a patch
anomalous is learned by the SPG guides from the auxiliary set, on top of these tokens. Every
variant tried on the way, with its figures, is in docs/builtin_lab_notes.md.

1. Pixel channels (10): opponent colour L, a = R - G, b = (R + G)/2 - B; the gradient
   magnitude of L (central differences after a sigma-1 blur, so sensor noise does not
   dominate plain surfaces); and a band-pass pyramid of L (L - G1, G1 - G2, G2 - G4) split
   into its positive (bright detail) and negative (dark detail) parts. The band-pass parts
   tell thin lines and small pits from smooth shading; their sign tells dark from bright.
2. Patch descriptors (19) on an 8-px grid (32 x 32 at 256 px): per-patch means of the 10
   channels, standard deviations of L, a, b, and the per-patch maxima of the 6 band-pass
   parts (a defect a few pixels wide is diluted in an 8-px mean; its maximum is not).
3. Context (19): the same descriptors averaged over the 3 x 3 neighbouring patches.
4. Robust per-image standardisation of 2-3: (x - median) / (MAD + 0.02), clamped to +-20.
5. Self-similarity (12), within one image: for each patch, the distance to its k-th nearest
   patch elsewhere in the image (its 3 x 3 neighbourhood excluded), k in (1, 3, 10, 30),
   for three descriptor groups (colour, structure, context), as log1p(max(d_k / median - 1,
   0)), the median taken over the grid's outer ring and its interior separately (a border
   patch sees padding and fewer neighbours). Texture repeats and outlines have many
   look-alikes; a defect has few. k stops at 30: an object's body covers fewer than 100 patches.
6. Colour rarity (4): for each pixel, -log of how often its colour (16 levels each of L, a,
   b, smoothed over neighbouring bins) occurs in the image outside the 5 x 5 patches around
   it; pooled per patch as mean and max, raw and after a 3 x 3 erosion. Kept unnormalised:
   its magnitude is what steers a rare patch's token direction under cosine scoring. Per
   pixel, because a patch mean blends an outline's two common colours into a rare one.
7. Symmetry residual (4, `symmetry.py`): each pixel's difference from its mirror image about
   the image's best axis and from its own repeat one period away; per pooled value, the
   smaller of the two (a part has no repeat, a random texture neither). Both residuals are
   divided by the reference's local gradient (a sub-pixel shift of an edge is explained) and
   count only from each image's own 90th percentile up (`symmetry_floor`).
8. Colour-bag similarity (8, `colour_bag_similarity`): the self-similarity of each patch's
   mix of the image's own 16-colour palette, local and 3 x 3 context. A stain or a foreign
   particle changes a texture's mix of speckles without bringing a colour of its own.
9. Joint evidence (1): the geometric mean of self-similarity, colour-bag similarity, colour
   rarity and symmetry residual, the AND of the cues (see `joint_evidence`).
10. The standardised descriptors (scaled by 0.05) and their absolute values (local part).
11. A constant channel, so a perfectly ordinary patch still has a direction (cosine scoring
   needs one).

Token = [1 | joint (1) | 0.02 x (self-similarity (12) | colour rarity (4) | symmetry (4) |
colour bag (8) | |z_local| (19) | z_local (19) | z_context (19))], D = 87.

The descriptors are scaled down to 0.02 because under cosine scoring a token's direction,
not its size, is what the guides see: at full size a normal patch's direction wanders with
whichever cue is high, and the joint evidence is only one axis of many. Small, they still
tell ordinary patches apart for the SAE and the atom views.

Its joint channel alone (the max per image, no training) is the zero-training baseline
reported beside every builtin SPG figure (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .base import Backbone
from .symmetry import (
    central_differences,
    gaussian_blur,
    mirror_residual,
    repeat_residual,
)

_K_NEIGHBOURS = (1, 3, 10, 30)
_BANDPASS_SIGMAS = (1.0, 2.0, 4.0)  # L - G1, G1 - G2, G2 - G4
_Z_SCALE = 0.05
_Z_CLAMP = 20.0
_MAD_FLOOR = 0.02

# Patch-descriptor layout (see patch_descriptors): indices into the 19 local descriptors.
_COLOUR = [0, 1, 2, 10, 11, 12]  # means and stds of L, a, b
_STRUCTURE = [3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18]  # |grad| mean, band-pass means and maxima
_N_DESC = 19
_LEVELS = 16  # colour bins per channel for colour rarity
_RARITY_EXCLUDE = 2  # patches: the 5 x 5 patches around a pixel do not count as its look-alikes
_POOLED_MAX = 1  # pooled_map's layout is (mean, max, eroded mean, eroded max)
_PALETTE = 16  # colours in each image's own palette (colour-bag similarity)
_PALETTE_ITERS = 8  # k-means steps; the palette only has to be stable, not optimal
_PALETTE_STRIDE = 4  # px: k-means is fitted on every 4th pixel in each direction
_DESC_SCALE = 0.02  # descriptor channels, relative to the constant and the joint evidence
_SYMMETRY_FLOOR = 0.9  # symmetry residuals count from each image's 90th percentile up


def pixel_channels(images: torch.Tensor) -> torch.Tensor:
    """`[B, 3, S, S]` RGB in [0, 1] -> `[B, 10, S, S]`.

    Channels: L, a, b, |grad L|, then (bright, dark) parts of L - G1, G1 - G2, G2 - G4.
    """
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    lum = (r + g + b) / 3
    blurred = [lum] + [gaussian_blur(lum, s) for s in _BANDPASS_SIGMAS]  # L, G1, G2, G4
    # Gradient on the sigma-1 blur: sensor noise would otherwise dominate plain surfaces.
    gx, gy = central_differences(blurred[1])
    grad = torch.sqrt(gx**2 + gy**2 + 1e-8)
    bands = []
    for fine, coarse in itertools.pairwise(blurred):
        d = fine - coarse
        bands += [d.clamp_min(0), (-d).clamp_min(0)]  # bright, dark detail
    return torch.cat([lum, r - g, (r + g) / 2 - b, grad, *bands], dim=1)


def patch_descriptors(channels: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, 10, S, S]` -> `[B, 19, h, w]`: means of the 10 channels, stds of L, a, b,
    maxima of the 6 band-pass parts."""
    mean = F.avg_pool2d(channels, patch)
    sq = F.avg_pool2d(channels[:, :3] ** 2, patch)
    std = (sq - mean[:, :3] ** 2).clamp_min(0).sqrt()
    peak = F.max_pool2d(channels[:, 4:], patch)
    return torch.cat([mean, std, peak], dim=1)


def robust_standardise(desc: torch.Tensor) -> torch.Tensor:
    """Per image and channel: (x - median) / (MAD + floor). `[B, C, N]` -> same."""
    med = desc.median(dim=-1, keepdim=True).values
    mad = (desc - med).abs().median(dim=-1, keepdim=True).values
    return (desc - med) / (mad + _MAD_FLOOR)


def colour_codes(channels: torch.Tensor, levels: int = _LEVELS) -> torch.Tensor:
    """`[B, 10, S, S]` pixel channels -> `[B, S, S]` colour bin of each pixel, in [0, LEVELS^3).

    Fixed absolute bins (L in [0, 1], a and b in [-0.5, 0.5], `levels` each), not per-image
    ranges: a defect whose colour lies outside the image's usual range must not be folded
    into the extreme bin that the normal extremes share.
    """

    def level(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return ((x - lo) / (hi - lo) * levels).floor().clamp(0, levels - 1).long()

    return (level(channels[:, 0], 0.0, 1.0) * levels + level(channels[:, 1], -0.5, 0.5)) * levels + level(
        channels[:, 2], -0.5, 0.5
    )


def colour_rarity(
    codes: torch.Tensor, patch: int, exclude: int = _RARITY_EXCLUDE, levels: int = _LEVELS
) -> torch.Tensor:
    """Per-pixel colour surprise: -log p(colour | the image outside the pixel's neighbourhood).

    `codes`: `[B, S, S]` from `colour_codes`. The density counts every pixel of the image
    except those within `exclude` patches of the pixel's own patch (a stain must not
    explain itself), smoothed over the 3 x 3 x 3 neighbouring bins so that noise and
    shading do not make ordinary colours rare. Per pixel, not per patch mean: the
    colour mixtures at an object's outline are made of two common colours, a stain of
    an uncommon one. Returns `[B, S, S]`.
    """
    bsz, size, _ = codes.shape
    g, nb, dev = size // patch, levels**3, codes.device
    rows = torch.arange(size, device=dev) // patch
    py, px = rows[:, None].expand(size, size).flatten(), rows[None, :].expand(size, size).flatten()  # [S*S]
    flat = codes.flatten(1)  # [B, S*S]
    lab = torch.stack([flat // (levels * levels), flat // levels % levels, flat % levels])
    # Per-patch colour histograms [B, g*g*nb], box-smoothed in colour space at scatter
    # time: each pixel votes for its 27 neighbouring bins.
    hist = torch.zeros(bsz, g * g * nb, device=dev)
    cell = py * g + px
    for shift in torch.cartesian_prod(*[torch.tensor([-1, 0, 1])] * 3).to(dev):
        q = lab + shift[:, None, None]
        valid = ((q >= 0) & (q < levels)).all(0)
        code = (q[0] * levels + q[1]) * levels + q[2]
        hist.scatter_add_(1, cell * nb + code.clamp(0, nb - 1), valid.float())
    total = hist.view(bsz, g * g, nb).sum(1).gather(1, flat)  # [B, S*S] votes image-wide
    # Votes from the excluded window, read only at each pixel's own bin: (2e+1)^2 gathers
    # instead of box-filtering the whole [B, g, g, nb] histogram.
    near = torch.zeros_like(total)
    near_cells = torch.zeros(size * size, device=dev)
    for dy in range(-exclude, exclude + 1):
        for dx in range(-exclude, exclude + 1):
            ny, nx = py + dy, px + dx
            inside = (ny >= 0) & (ny < g) & (nx >= 0) & (nx < g)
            other = (ny.clamp(0, g - 1) * g + nx.clamp(0, g - 1)) * nb
            near += hist.gather(1, other + flat) * inside
            near_cells += inside
    votes = (total - near) / 27
    n_rest = size * size - near_cells * patch * patch  # pixels that may vote
    return -torch.log((votes + 0.5) / (n_rest + 0.5 * nb)).view(bsz, size, size)


def pooled_map(m: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, S, S]` per-pixel map -> `[B, N, 4]`: patch mean and max, raw and after a 3 x 3
    erosion (the erosion drops 1-2 px bands along edges, where colours mix and mirror
    images misalign, and keeps blobs)."""
    eroded = -F.max_pool2d(-m[:, None], 3, stride=1, padding=1)[:, 0]
    out = []
    for r in (m[:, None], eroded[:, None]):
        out += [F.avg_pool2d(r, patch), F.max_pool2d(r, patch)]
    return torch.cat(out, 1).flatten(2).transpose(1, 2)


def palette_weights(channels: torch.Tensor, colours: int = _PALETTE) -> torch.Tensor:
    """Soft membership of each pixel in the image's own palette. `[B, 10, S, S]` pixel
    channels -> `[B, colours, S, S]`, summing to 1 over the palette.

    The palette is a k-means clustering of the image's (L, a, b), seeded deterministically
    (the mean colour, then each farthest colour in turn, so rare colours get a cluster of
    their own). Soft, with the temperature at the median squared distance to the nearest
    colour, so that shading does not flip a pixel between two clusters.
    """
    lab = channels[:, :3]
    bsz = lab.shape[0]
    every = lab.flatten(2).transpose(1, 2)  # [B, P, 3]
    sample = lab[..., ::_PALETTE_STRIDE, ::_PALETTE_STRIDE].flatten(2).transpose(1, 2)
    rows = torch.arange(bsz, device=lab.device)
    centres = [sample.mean(1)]
    nearest = (sample - centres[0][:, None]).pow(2).sum(-1)  # [B, p] to the closest centre
    for _ in range(colours - 1):
        centres.append(sample[rows, nearest.argmax(1)])
        nearest = torch.minimum(nearest, (sample - centres[-1][:, None]).pow(2).sum(-1))
    centres = torch.stack(centres, 1)  # [B, K, 3]
    for _ in range(_PALETTE_ITERS):
        d = torch.cdist(sample, centres, compute_mode="donot_use_mm_for_euclid_dist")
        member = F.one_hot(d.argmin(-1), colours).to(lab.dtype)  # [B, p, K]
        count = member.sum(1)[..., None]
        centres = torch.where(count > 0, member.transpose(1, 2) @ sample / count.clamp_min(1), centres)
    d2 = torch.cdist(every, centres, compute_mode="donot_use_mm_for_euclid_dist").pow(2)  # [B, P, K]
    tau = d2.min(-1).values.median(1).values[:, None, None] + 1e-4
    return torch.softmax(-d2 / tau, -1).transpose(1, 2).reshape(bsz, colours, *lab.shape[-2:])


def colour_bag_similarity(channels: torch.Tensor, patch: int, near: torch.Tensor) -> torch.Tensor:
    """Self-similarity of each patch's mix of palette colours. `[B, 10, S, S]` -> `[B, N, 8]`.

    A patch is described by the share of each palette colour in it, and in its 3 x 3
    neighbourhood; its distance to the k-th most similar patch elsewhere in the image
    (k in 1, 3, 10, 30) says how unusual that mix is. Means and deviations (the
    descriptors below) blur a texture's mix of speckles into one grey; the mix itself
    is what a stain, a patch of missing texture or a foreign particle changes.
    """
    local = F.avg_pool2d(palette_weights(channels), patch)  # [B, K, h, w]
    context = F.avg_pool2d(local, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([self_similarity(m.flatten(2).transpose(1, 2), near, _K_NEIGHBOURS) for m in (local, context)], -1)


def joint_evidence(sim: torch.Tensor, bag: torch.Tensor, rarity: torch.Tensor, symmetry: torch.Tensor) -> torch.Tensor:
    """The AND of the four cues, one channel: `[B, N, 12]`, `[B, N, 8]`, `[B, N, 4]`,
    `[B, N, 4]` -> `[B, N, 1]`, the geometric mean of the self-similarities' mean, the
    colour bags' mean, the raw max-pooled rarity and the raw max-pooled symmetry residual.

    A product, because each cue alone fires on some normal part (a pill's dots are rare
    in colour, its highlight has no mirror twin, a plug's pins have few look-alikes, a
    granite's odd cluster of speckles has an unusual mix) but rarely the same part, while
    a defect trips all of them. Cosine guides are linear in the token, so they cannot
    form this AND from the separate channels themselves. The 4th root keeps it on a
    single cue's scale: the raw product spans 0 to several hundred and would leave the
    SAE one direction to learn.
    """
    product = sim.mean(-1) * bag.mean(-1) * rarity[..., _POOLED_MAX] * symmetry[..., _POOLED_MAX]
    return product.clamp_min(0).pow(0.25)[..., None]


def symmetry_floor(symmetry: torch.Tensor, quantile: float = _SYMMETRY_FLOOR) -> torch.Tensor:
    """`[B, N, C]` pooled symmetry residuals -> the same, raised to each image's own
    `quantile` over its patches, per channel.

    A residual is evidence only where it stands out from what the image's best symmetry
    leaves unexplained anyway. On a random texture (granite) neither a mirror nor a
    repeat fits, the residual is noise everywhere, and in the joint product that noise
    outvoted the other cues; smooth defects (a stain, a worn patch) even lower it. On a
    part or a repeating texture most patches are explained and the floor sits near 0.
    """
    return symmetry.clamp_min(symmetry.quantile(quantile, dim=1, keepdim=True))


def _neighbourhood_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    """`[N, N]` True where two patches are within one patch of each other (self included)."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    return ((y[:, None] - y[None, :]).abs() <= 1) & ((x[:, None] - x[None, :]).abs() <= 1)


def self_similarity(z: torch.Tensor, near: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """k-th nearest-neighbour distances within each image, median-normalised.

    `z`: `[B, N, C]` standardised descriptors; `near`: `[N, N]` excluded pairs.
    Returns `[B, N, len(ks)]`: log1p(max(d_k / median(d_k) - 1, 0)), the median taken
    separately over the grid's outer ring of patches (those with fewer neighbours in
    `near`) and over the rest. A border patch's context is averaged over fewer
    neighbours and its band-pass sees padding, so its nearest look-alikes are all
    farther; against one image-wide median, the ring of every textured good image
    looked anomalous.
    """
    # Direct differences, not the matmul expansion: that one loses precision for near
    # neighbours and made CUDA and CPU tokens disagree (seen on an H100).
    dist = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")  # [B, N, N]
    dist = dist.masked_fill(near, float("inf"))
    kmax = min(max(ks), dist.shape[-1] - int(near[0].sum()))
    nearest = dist.topk(kmax, dim=-1, largest=False).values  # [B, N, kmax], ascending
    picked = nearest[..., [min(k, kmax) - 1 for k in ks]]  # [B, N, len(ks)]
    support = near.sum(1)
    ring = support < support.max()  # [N]
    med = torch.where(
        ring[None, :, None],
        picked[:, ring].median(dim=1, keepdim=True).values,
        picked[:, ~ring].median(dim=1, keepdim=True).values,
    )
    ratio = picked / (med + 1e-3)
    return torch.log1p((ratio - 1).clamp_min(0))


class BuiltinBackbone(Backbone):
    """Weight-free band-pass + self-similarity features; see the module docstring. 256 px, 8-px patches."""

    name = "builtin"
    image_size = 256
    patch_size = 8
    dim = 1 + 1 + 3 * len(_K_NEIGHBOURS) + 4 + 4 + 2 * len(_K_NEIGHBOURS) + 3 * _N_DESC  # 87
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    weights = "builtin-v6"

    def __init__(self) -> None:
        super().__init__()
        h, w = self.grid
        # A parameter-free module still needs a device anchor for `.to()` and store extraction.
        self.register_buffer("_near", _neighbourhood_mask(h, w, torch.device("cpu")), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 256, 256]` in [0, 1] -> `[B, 1024, 87]` tokens."""
        # Medians and nearest-neighbour ranks are precision-sensitive and cheap: always fp32.
        with torch.autocast(images.device.type, enabled=False):
            return self._tokens(images.float())

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        channels = pixel_channels(images)
        desc = patch_descriptors(channels, self.patch_size)  # [B, 19, h, w]
        context = F.avg_pool2d(desc, 3, stride=1, padding=1, count_include_pad=False)
        z_local = robust_standardise(desc.flatten(2)).clamp(-_Z_CLAMP, _Z_CLAMP).transpose(1, 2)  # [B, N, 19]
        z_ctx = robust_standardise(context.flatten(2)).clamp(-_Z_CLAMP, _Z_CLAMP).transpose(1, 2)
        groups = (z_local[..., _COLOUR], z_local[..., _STRUCTURE], z_ctx)
        sim = torch.cat([self_similarity(g, self._near, _K_NEIGHBOURS) for g in groups], dim=-1)  # [B, N, 12]
        z = torch.cat([z_local, z_ctx], dim=-1) * _Z_SCALE  # [B, N, 38]
        rarity = pooled_map(colour_rarity(colour_codes(channels), self.patch_size), self.patch_size)  # [B, N, 4]
        # Each pooled value keeps the better of the two explanations: a part's mirror image
        # or a texture's repeat (a part has no repeat, a random texture neither).
        symmetry = torch.minimum(
            pooled_map(mirror_residual(images), self.patch_size), pooled_map(repeat_residual(images), self.patch_size)
        )  # [B, N, 4]
        symmetry = symmetry_floor(symmetry)
        bag = colour_bag_similarity(channels, self.patch_size, self._near)  # [B, N, 8]
        descriptors = torch.cat([sim, rarity, symmetry, bag, z[..., :_N_DESC].abs(), z], dim=-1)
        ones = torch.ones_like(sim[..., :1])
        return torch.cat([ones, joint_evidence(sim, bag, rarity, symmetry), _DESC_SCALE * descriptors], dim=-1)
