"""`builtin`: a weight-free backbone, so the demo and the tests run anywhere with no download.

It is not a neural network; it is a fixed, documented, per-image feature
extractor (no learned weights, no randomness). Nothing category-specific is
built in: what makes a patch anomalous is learned by the SPG guides from the
auxiliary set, on top of these tokens.

1. Pixel channels (10): opponent colour L, a = R - G, b = (R + G)/2 - B; the
   gradient magnitude of L (central differences after a sigma-1 blur); and a
   band-pass pyramid of L (L - G1, G1 - G2, G2 - G4, G_s a Gaussian blur of
   sigma s) split into its positive (bright detail) and negative (dark detail)
   parts. The band-pass parts tell thin lines and small pits/particles (most
   defects) from smooth shading, and their sign tells dark from bright.
2. Patch descriptors (19) on an 8-px grid (32 x 32 at 256 px): per-patch means
   of the 10 channels, standard deviations of L, a, b, and the per-patch MAXIMA
   of the 6 band-pass parts. A defect a few pixels wide is diluted in an 8-px
   mean; its maximum is not.
3. Context (19): the same descriptors averaged over the 3 x 3 neighbouring patches.
4. Robust per-image standardisation of 2-3: (x - median) / (MAD + 0.02),
   clamped to +-20.
5. Self-similarity (12), the zero-shot cue AnomalyDINO uses with DINOv2
   features, here within one image: for each patch, the distance to its k-th
   nearest patch elsewhere in the image (its 3 x 3 neighbourhood excluded),
   k in (1, 3, 10, 30), for three descriptor groups (colour, structure,
   context), as log1p(max(d_k / median_image(d_k) - 1, 0)). Texture repeats and
   object outlines (the descriptors are rotation invariant) have many
   look-alikes; a defect has few. k stops at 30 (v1 went to 100): an object's
   body covers fewer than 100 patches, so large k flagged whole objects.
6. Colour rarity (4), added in v3: for each pixel, -log of how often its colour
   (16 levels each of L, a, b, box-smoothed over neighbouring bins) occurs in the
   image outside the 5 x 5 patches around it; pooled per patch as mean and max, raw
   and after a 3 x 3 erosion. Kept unnormalised: its magnitude (3.4 for the most
   common colour, ~12 for a colour seen nowhere else) is what steers a rare patch's
   token direction under cosine scoring (median-centring it measured worse).
   Per pixel, because a patch mean blends an outline's two common colours into a
   rare one. Measured in the SPG pipeline (DEMO_PRESET, before the guide-loss fix):
   mean image / pixel AUROC 0.580 / 0.845 -> 0.714 / 0.921 (a -> b) and
   0.581 / 0.775 -> 0.678 / 0.927 (b -> a). Tried and dropped (no gain in both
   directions): structure-tensor coherence, per-pixel band-pass rarity, a second
   rarity at 8 colour levels, a second rarity with a 9 x 9 or a 3 x 3 patch
   exclusion, dropping the raw max.
7. Mirror asymmetry (4), added in v4: made things are mostly mirror-symmetric. The
   image is reflected about its best-matching axis through the foreground centroid
   (searched in 3-degree steps), and each pixel gets its difference from its mirror
   position in chromaticity and relative band-pass detail (both blind to smooth shading)
   and luminance; pooled like the rarity. A printed mark on the axis or one of a pair of
   pins is matched, a defect is not (its mirror position lights up too: a ghost the
   other cues do not share). Textures with a grain (brushed, tiles) are mirror-symmetric
   along it; textures without one get a flat, uninformative map. 15 ms per image.
8. Joint evidence (1), added in v4: self-similarity x rarity x asymmetry, the AND of
   the three cues (see `joint_evidence`). Measured in the SPG pipeline (DEMO_PRESET):
   mean image / pixel AUROC 0.669 / 0.919 (v3) -> 0.706 / 0.934 with asymmetry alone
   -> 0.807 / 0.940 with the joint channel (a -> b); 0.708 / 0.943 -> 0.688 / 0.952
   -> 0.733 / 0.934 (b -> a). Tried and dropped: asymmetry scaled x3, asymmetry divided
   by the image's mean asymmetry, the three pairwise products as well (all no better in
   both directions); the minimum over the two or three best axes, per cue group (no
   better as a stand-alone score).
9. The standardised descriptors, scaled by 0.05 so they shape but do not
   dominate a token's direction, and their absolute values (local part only).
10. A constant channel, so a perfectly ordinary patch still has a direction
   (cosine scoring needs one).

Token = [1 | self-similarity (12) | colour rarity (4) | mirror asymmetry (4) | joint (1) |
|z_local| (19) | z_local (19) | z_context (19)], D = 79.

Known limits (measured): thin-line defects (scratch, crack) and chunks missing
at an object's outline are the weakest kinds; unique normal parts of objects (a
specular highlight, a printed mark, pill dots, plug pins) are as rare within
their image as a small defect. v4's asymmetry and joint evidence were added for
exactly these; see the README's Status table for where image AUROC stands.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Backbone

_K_NEIGHBOURS = (1, 3, 10, 30)
_BANDPASS_SIGMAS = (1.0, 2.0, 4.0)   # L - G1, G1 - G2, G2 - G4
_Z_SCALE = 0.05
_Z_CLAMP = 20.0
_MAD_FLOOR = 0.02

# Patch-descriptor layout (see patch_descriptors): indices into the 19 local descriptors.
_COLOUR = [0, 1, 2, 10, 11, 12]                          # means and stds of L, a, b
_STRUCTURE = [3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18]  # |grad| mean, band-pass means and maxima
_N_DESC = 19
_LEVELS = 16            # colour bins per channel for colour rarity
_RARITY_EXCLUDE = 2     # patches: the 5 x 5 patches around a pixel do not count as its look-alikes
_MIRROR_SIZE = 128      # px: mirror symmetry is searched and compared at half resolution
_MIRROR_ANGLES = 60     # candidate axis angles in [0, pi): 3-degree steps
_POOLED_MAX = 1         # pooled_map's layout is (mean, max, eroded mean, eroded max)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `[B, C, H, W]` with reflect padding."""
    radius = int(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(x.shape[1], 1, 1, 1)
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, k, groups=x.shape[1])
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    return F.conv2d(x, k.transpose(-1, -2), groups=x.shape[1])


def pixel_channels(images: torch.Tensor) -> torch.Tensor:
    """`[B, 3, S, S]` RGB in [0, 1] -> `[B, 10, S, S]`.

    Channels: L, a, b, |grad L|, then (bright, dark) parts of L - G1, G1 - G2, G2 - G4.
    """
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    lum = (r + g + b) / 3
    blurred = [lum] + [_gaussian_blur(lum, s) for s in _BANDPASS_SIGMAS]     # L, G1, G2, G4
    # Gradient on the sigma-1 blur: sensor noise would otherwise dominate plain surfaces.
    p = F.pad(blurred[1], (1, 1, 1, 1), mode="replicate")
    gx = (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2
    gy = (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2
    grad = torch.sqrt(gx ** 2 + gy ** 2 + 1e-8)
    bands = []
    for fine, coarse in zip(blurred[:-1], blurred[1:]):
        d = fine - coarse
        bands += [d.clamp_min(0), (-d).clamp_min(0)]                         # bright, dark detail
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
    return (level(channels[:, 0], 0.0, 1.0) * levels + level(channels[:, 1], -0.5, 0.5)) * levels \
        + level(channels[:, 2], -0.5, 0.5)


def colour_rarity(codes: torch.Tensor, patch: int, exclude: int = _RARITY_EXCLUDE, levels: int = _LEVELS) -> torch.Tensor:
    """Per-pixel colour surprise: -log p(colour | the image outside the pixel's neighbourhood).

    `codes`: `[B, S, S]` from `colour_codes`. The density counts every pixel of the image
    except those within `exclude` patches of the pixel's own patch (a stain must not
    explain itself), smoothed over the 3 x 3 x 3 neighbouring bins so that noise and
    shading do not make ordinary colours rare. Per pixel, not per patch mean: the
    colour mixtures at an object's outline are made of two common colours, a stain of
    an uncommon one. Returns `[B, S, S]`.
    """
    bsz, size, _ = codes.shape
    g, nb, dev = size // patch, levels ** 3, codes.device
    rows = torch.arange(size, device=dev) // patch
    py, px = rows[:, None].expand(size, size).flatten(), rows[None, :].expand(size, size).flatten()   # [S*S]
    flat = codes.flatten(1)                                                 # [B, S*S]
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
    total = hist.view(bsz, g * g, nb).sum(1).gather(1, flat)                # [B, S*S] votes image-wide
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
    n_rest = size * size - near_cells * patch * patch                       # pixels that may vote
    return -torch.log((votes + 0.5) / (n_rest + 0.5 * nb)).view(bsz, size, size)


def _border_median(x: torch.Tensor, width: int = 4) -> torch.Tensor:
    """`[B, C, s, s]` -> `[B, C, 1, 1]`: median of the pixels within `width` of the image border."""
    strips = [x[..., :width, :], x[..., -width:, :], x[..., :, :width], x[..., :, -width:]]
    return torch.cat([t.flatten(2) for t in strips], -1).median(-1).values[..., None, None]


def _reflect(f: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Mirror `f` `[B, C, s, s]` across the line through (cx, cy) `[B]` at angle theta `[B]`."""
    size = f.shape[-1]
    t = torch.arange(size, dtype=f.dtype, device=f.device)
    dy, dx = (t[None, :, None] - cy[:, None, None]), (t[None, None, :] - cx[:, None, None])   # [B, s, 1], [B, 1, s]
    c2, s2 = torch.cos(2 * theta)[:, None, None], torch.sin(2 * theta)[:, None, None]
    rx, ry = cx[:, None, None] + c2 * dx + s2 * dy, cy[:, None, None] + s2 * dx - c2 * dy   # [B, s, s]
    grid = torch.stack([rx, ry], -1) / (size - 1) * 2 - 1
    return F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True)


def mirror_residual(images: torch.Tensor, size: int = _MIRROR_SIZE, angles: int = _MIRROR_ANGLES) -> torch.Tensor:
    """Per-pixel asymmetry about the image's best mirror axis. `[B, 3, S, S]` -> `[B, S, S]`.

    Made things are mostly mirror-symmetric, and most of a defect's look-alikes are gone in
    its mirror image, while a unique normal part (a printed mark on the axis, a pin with a
    twin) is matched. The axis runs through the centroid of the foreground (pixels unlike
    the border's median colour; the whole image when that is most or none of it); its
    angle is the one, of `angles` in [0, pi), whose reflection best matches the foreground.
    Features compared: chromaticity and relative band-pass detail (both blind to smooth
    shading) and blurred luminance. The residual is the smallest difference within 1 px of
    the mirrored position (rendering and sampling misalign by that much), zero off the
    foreground, computed at `size` px and upsampled.
    """
    bsz, _, full, _ = images.shape
    x = F.interpolate(images, size=size, mode="area")
    lum = x.mean(1, keepdim=True)
    g1, g3 = _gaussian_blur(lum, 1.0), _gaussian_blur(lum, 3.0)
    chroma = x[:, :2] / (x.sum(1, keepdim=True) + 0.05)
    f = torch.cat([4 * chroma, 4 * (g1 - g3) / (g3 + 0.05), g1], 1)                 # [B, 4, s, s]
    sal = (x - _border_median(x)).norm(dim=1)                                       # [B, s, s]
    fg = (sal > 0.5 * sal.flatten(1).quantile(0.99, dim=1)[:, None, None]).float()
    share = fg.mean((1, 2))[:, None, None]
    fg = torch.where((share > 0.6) | (share < 0.01), torch.ones_like(fg), fg)
    t = torch.arange(size, dtype=f.dtype, device=f.device)
    area = fg.sum((1, 2))
    cy, cx = (fg.sum(2) * t).sum(1) / area, (fg.sum(1) * t).sum(1) / area
    cost = torch.stack([((f - _reflect(f, cx, cy, th.expand(bsz))).abs().sum(1) * fg).sum((1, 2))
                        for th in torch.arange(angles, device=f.device) * math.pi / angles], 1)   # [B, A]
    mirrored = F.pad(_reflect(f, cx, cy, cost.argmin(1).float() * math.pi / angles), (1, 1, 1, 1), mode="replicate")
    residual = torch.stack([(f - mirrored[..., dy:dy + size, dx:dx + size]).abs().sum(1)
                            for dy in range(3) for dx in range(3)]).min(0).values * fg
    return F.interpolate(residual[:, None], size=full, mode="bilinear", align_corners=False)[:, 0]


def pooled_map(m: torch.Tensor, patch: int) -> torch.Tensor:
    """`[B, S, S]` per-pixel map -> `[B, N, 4]`: patch mean and max, raw and after a 3 x 3
    erosion (the erosion drops 1-2 px bands along edges, where colours mix and mirror
    images misalign, and keeps blobs)."""
    eroded = -F.max_pool2d(-m[:, None], 3, stride=1, padding=1)[:, 0]
    out = []
    for r in (m[:, None], eroded[:, None]):
        out += [F.avg_pool2d(r, patch), F.max_pool2d(r, patch)]
    return torch.cat(out, 1).flatten(2).transpose(1, 2)


def joint_evidence(sim: torch.Tensor, rarity: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """Self-similarity x colour rarity x mirror asymmetry, one channel: `[B, N, 12]`,
    `[B, N, 4]`, `[B, N, 4]` -> `[B, N, 1]` (mean of the 12 self-similarities, the raw
    max-pooled rarity and asymmetry).

    A product, because each cue alone fires on some normal part of a made object (a pill's
    dots are rare, its highlight has no mirror twin, a plug's pins have few look-alikes)
    but rarely the same part, while a defect trips all three. Cosine guides are linear in
    the token, so they cannot form this AND from the separate channels themselves.
    """
    return (sim.mean(-1) * rarity[..., _POOLED_MAX] * mirror[..., _POOLED_MAX])[..., None]


def _neighbourhood_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    """`[N, N]` True where two patches are within one patch of each other (self included)."""
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    return ((y[:, None] - y[None, :]).abs() <= 1) & ((x[:, None] - x[None, :]).abs() <= 1)


def self_similarity(z: torch.Tensor, near: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """k-th nearest-neighbour distances within each image, median-normalised.

    `z`: `[B, N, C]` standardised descriptors; `near`: `[N, N]` excluded pairs.
    Returns `[B, N, len(ks)]`: log1p(max(d_k / median(d_k) - 1, 0)).
    """
    # Direct differences, not the matmul expansion: that one loses precision for near
    # neighbours and made CUDA and CPU tokens disagree (seen on an H100).
    dist = torch.cdist(z, z, compute_mode="donot_use_mm_for_euclid_dist")   # [B, N, N]
    dist = dist.masked_fill(near, float("inf"))
    kmax = min(max(ks), dist.shape[-1] - int(near[0].sum()))
    nearest = dist.topk(kmax, dim=-1, largest=False).values      # [B, N, kmax], ascending
    picked = nearest[..., [min(k, kmax) - 1 for k in ks]]        # [B, N, len(ks)]
    med = picked.median(dim=1, keepdim=True).values
    ratio = picked / (med + 1e-3)
    return torch.log1p((ratio - 1).clamp_min(0))


class BuiltinBackbone(Backbone):
    """Weight-free band-pass + self-similarity features; see the module docstring. 256 px, 8-px patches."""

    name = "builtin"
    image_size = 256
    patch_size = 8
    dim = 1 + 3 * len(_K_NEIGHBOURS) + 4 + 4 + 1 + 3 * _N_DESC      # 79
    mean = (0.0, 0.0, 0.0)
    std = (1.0, 1.0, 1.0)
    weights = "builtin-v4"

    def __init__(self) -> None:
        super().__init__()
        h, w = self.grid
        # A parameter-free module still needs a device anchor for `.to()` and store extraction.
        self.register_buffer("_near", _neighbourhood_mask(h, w, torch.device("cpu")), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, 256, 256]` in [0, 1] -> `[B, 1024, 79]` tokens."""
        # Medians and nearest-neighbour ranks are precision-sensitive and cheap: always fp32.
        with torch.autocast(images.device.type, enabled=False):
            return self._tokens(images.float())

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        channels = pixel_channels(images)
        desc = patch_descriptors(channels, self.patch_size)                        # [B, 19, h, w]
        context = F.avg_pool2d(desc, 3, stride=1, padding=1, count_include_pad=False)
        z_local = robust_standardise(desc.flatten(2)).clamp(-_Z_CLAMP, _Z_CLAMP).transpose(1, 2)   # [B, N, 19]
        z_ctx = robust_standardise(context.flatten(2)).clamp(-_Z_CLAMP, _Z_CLAMP).transpose(1, 2)
        groups = (z_local[..., _COLOUR], z_local[..., _STRUCTURE], z_ctx)
        sim = torch.cat([self_similarity(g, self._near, _K_NEIGHBOURS) for g in groups], dim=-1)  # [B, N, 12]
        z = torch.cat([z_local, z_ctx], dim=-1) * _Z_SCALE                        # [B, N, 38]
        rarity = pooled_map(colour_rarity(colour_codes(channels), self.patch_size), self.patch_size)  # [B, N, 4]
        mirror = pooled_map(mirror_residual(images), self.patch_size)                 # [B, N, 4]
        ones = torch.ones_like(sim[..., :1])
        return torch.cat([ones, sim, rarity, mirror, joint_evidence(sim, rarity, mirror),
                          z[..., :_N_DESC].abs(), z], dim=-1)
