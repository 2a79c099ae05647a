"""Symmetry residuals for the `builtin` backbone: how badly a pixel is explained by the
image's own mirror image or by its own repeat one period away.

Made things are mostly mirror-symmetric and many textures repeat. A defect breaks
both; a unique but intended part (a printed mark on the axis, one of a pair of pins,
one thread of a weave) does not. Both residuals are per pixel, `[B, 3, S, S]` RGB in
[0, 1] -> `[B, S, S]`, computed at `SIZE` px and upsampled. Both are divided by the
reference's local gradient (`_edge_discount`), so that an edge the reference has
too, merely shifted by a fraction of a pixel, counts as explained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..gaussian import gaussian_blur as shared_gaussian_blur

SIZE = 128  # px: symmetry is searched and compared at half resolution
MIRROR_ANGLES = 60  # candidate axis angles in [0, pi): 3-degree steps
MIRROR_OFFSETS = (-0.5, 0.0, 0.5)  # px at SIZE: candidate axis positions about the centroid
FG_DILATE = 3  # px at SIZE: the foreground grows this far past the Otsu mask
PERIOD_RANGE = (6, 40)  # px at SIZE: translations shorter than 6 px match any smooth image
PERIOD_MIN_ANGLE = 25.0  # degrees between the two translation vectors
EDGE_WEIGHT = 3.0  # residuals are divided by 1 + EDGE_WEIGHT x the reference's local gradient


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of `[B, C, H, W]`: the shared blur with the edge rule and
    radius (3 sigma) these features were tuned with."""
    return shared_gaussian_blur(x, sigma, radius=int(3 * sigma), mode="mirror")


def symmetry_features(x: torch.Tensor) -> torch.Tensor:
    """`[B, 3, s, s]` -> `[B, 4, s, s]`: chromaticity (2), relative band-pass detail, blurred
    luminance. The first three are blind to smooth shading, which a mirror image or a
    repeat need not share."""
    lum = x.mean(1, keepdim=True)
    g1, g3 = gaussian_blur(lum, 1.0), gaussian_blur(lum, 3.0)
    chroma = x[:, :2] / (x.sum(1, keepdim=True) + 0.05)
    return torch.cat([4 * chroma, 4 * (g1 - g3) / (g3 + 0.05), g1], 1)


def _border_median(x: torch.Tensor, width: int = 4) -> torch.Tensor:
    """`[B, C, s, s]` -> `[B, C, 1, 1]`: median of the pixels within `width` of the image border."""
    strips = [x[..., :width, :], x[..., -width:, :], x[..., :, :width], x[..., :, -width:]]
    return torch.cat([t.flatten(2) for t in strips], -1).median(-1).values[..., None, None]


def otsu_threshold(v: torch.Tensor, bins: int = 64) -> torch.Tensor:
    """`[B, P]` values -> `[B]` the threshold that best splits each row in two (Otsu)."""
    lo, hi = v.min(1, keepdim=True).values, v.max(1, keepdim=True).values
    q = ((v - lo) / (hi - lo + 1e-8) * (bins - 1)).round().long()
    p = torch.zeros(v.shape[0], bins, device=v.device).scatter_add_(1, q, torch.ones_like(v))
    p = p / v.shape[1]
    c = torch.arange(bins, dtype=v.dtype, device=v.device)
    w0, mu = p.cumsum(1), (p * c).cumsum(1)
    between = (mu[:, -1:] * w0 - mu) ** 2 / (w0 * (1 - w0) + 1e-8)
    return lo[:, 0] + (between.argmax(1).to(v.dtype) + 0.5) / (bins - 1) * (hi - lo)[:, 0]


def foreground(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, 3, s, s]` -> (core, grown), each `[B, s, s]` in {0, 1}: pixels unlike the
    border's median colour, split from the rest by Otsu's threshold.

    The mirror axis goes through the centroid of `core`. `grown` (from the distance
    blurred by 1 px, so that noise does not speckle it, then dilated by `FG_DILATE` px)
    is where the mirror is compared: a chunk missing at the outline still counts. Both
    are the whole image when the core is most or none of it (a texture), and `grown` also
    when it covers most of the image. The centroid is
    taken before blurring and dilating: those move it by a fraction of a pixel when the
    part's two edges fall differently on the pixel grid, enough for a long part to
    prefer its short axis. Otsu, not a fixed quantile: a quantile cut can keep only a
    part's darkest features (docs/builtin_lab_notes.md).
    """
    base = _border_median(x)
    core = (x - base).norm(dim=1)
    core = (core > otsu_threshold(core.flatten(1))[:, None, None]).to(x.dtype)
    sal = (gaussian_blur(x, 1.0) - base).norm(dim=1)
    grown = (sal > otsu_threshold(sal.flatten(1))[:, None, None]).to(x.dtype)
    grown = F.max_pool2d(grown[:, None], 2 * FG_DILATE + 1, stride=1, padding=FG_DILATE)[:, 0]
    share = core.mean((1, 2))[:, None, None]
    texture = (share > 0.6) | (share < 0.01)
    grown_all = texture | (grown.mean((1, 2)) > 0.6)[:, None, None]
    return (torch.where(texture, torch.ones_like(core), core), torch.where(grown_all, torch.ones_like(grown), grown))


def _reflect(f: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Mirror `f` `[B, C, s, s]` across the line through (cx, cy) `[B]` at angle theta `[B]`."""
    size = f.shape[-1]
    t = torch.arange(size, dtype=f.dtype, device=f.device)
    dy, dx = (t[None, :, None] - cy[:, None, None]), (t[None, None, :] - cx[:, None, None])  # [B, s, 1], [B, 1, s]
    c2, s2 = torch.cos(2 * theta)[:, None, None], torch.sin(2 * theta)[:, None, None]
    rx, ry = cx[:, None, None] + c2 * dx + s2 * dy, cy[:, None, None] + s2 * dx - c2 * dy  # [B, s, s]
    grid = torch.stack([rx, ry], -1) / (size - 1) * 2 - 1
    return F.grid_sample(f, grid, mode="bilinear", padding_mode="border", align_corners=True)


def central_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[B, C, H, W]` -> (d/dx, d/dy), each `[B, C, H, W]`, with the border replicated."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return (p[..., 1:-1, 2:] - p[..., 1:-1, :-2]) / 2, (p[..., 2:, 1:-1] - p[..., :-2, 1:-1]) / 2


def local_gradient(f: torch.Tensor) -> torch.Tensor:
    """`[B, C, s, s]` -> `[B, s, s]`: |d/dx| + |d/dy| summed over channels, the largest
    within 1 px, as far as the residuals' shift tolerance reaches."""
    gx, gy = central_differences(f)
    return F.max_pool2d((gx.abs() + gy.abs()).sum(1)[:, None], 3, stride=1, padding=1)[:, 0]


def _edge_discount(reference: torch.Tensor) -> torch.Tensor:
    """`[B, C, s, s]` -> `[B, s, s]`: what a residual against `reference` is divided by.

    A mirror image or a repeat is never aligned to better than a fraction of a pixel, and
    at a sharp edge that fraction leaves a residual in proportion to the edge's contrast,
    as much as a faint stain's for a sharp printed mark. Divided
    by the reference's own local gradient, the residual reads more like a displacement:
    an edge that is merely shifted is explained, while new content where the reference
    is flat (a stain, a crack, a chunk gone) is not. A defect's ghost (its mirror
    position, whose reference holds the defect's edges) is damped as well. The cost: a
    defect lying over the part's own edges is damped too (the nut's contamination).
    """
    return 1 + EDGE_WEIGHT * local_gradient(reference)


def _min_shift_difference(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`[B, C, s, s]` twice -> `[B, s, s]`: |f - g| summed over channels, the smallest within
    1 px of each position of g (rendering and resampling misalign by that much)."""
    size = f.shape[-1]
    g = F.pad(g, (1, 1, 1, 1), mode="replicate")
    return (
        torch.stack([(f - g[..., dy : dy + size, dx : dx + size]).abs().sum(1) for dy in range(3) for dx in range(3)])
        .min(0)
        .values
    )


def mirror_residual(images: torch.Tensor, angles: int = MIRROR_ANGLES) -> torch.Tensor:
    """Per-pixel difference from the mirror image about the best axis. `[B, 3, S, S]` -> `[B, S, S]`.

    The axis runs within half a pixel of the centroid of the `foreground` core; its
    angle and offset are those, of `angles` in [0, pi) and `MIRROR_OFFSETS` along the
    axis' normal, whose reflection best matches the grown foreground. The offsets matter
    for long parts: a centroid a quarter-pixel off costs the long axis more along its
    long edges than the short axis loses on a mark that breaks it. Zero off the
    foreground. A defect also lights its mirror position, a ghost the other cues do not
    share; the edge discount damps it.
    """
    bsz, _, full, _ = images.shape
    x = F.interpolate(images, size=SIZE, mode="area")
    f, (core, fg) = symmetry_features(x), foreground(x)
    t = torch.arange(SIZE, dtype=f.dtype, device=f.device)
    area = core.sum((1, 2))
    cy, cx = (core.sum(2) * t).sum(1) / area, (core.sum(1) * t).sum(1) / area
    axes = [
        (th, d) for th in torch.arange(angles, device=f.device).to(f.dtype) * math.pi / angles for d in MIRROR_OFFSETS
    ]
    cost = torch.stack(
        [
            ((f - _reflect(f, cx - d * th.sin(), cy + d * th.cos(), th.expand(bsz))).abs().sum(1) * fg).sum((1, 2))
            for th, d in axes
        ],
        1,
    )  # [B, A * O]
    best = [axes[i] for i in cost.argmin(1).tolist()]
    th = torch.stack([a for a, _ in best])
    d = torch.tensor([o for _, o in best], dtype=f.dtype, device=f.device)
    mirrored = _reflect(f, cx - d * th.sin(), cy + d * th.cos(), th)
    residual = _min_shift_difference(f, mirrored) / _edge_discount(mirrored) * fg
    return F.interpolate(residual[:, None], size=full, mode="bilinear", align_corners=False)[:, 0]


def repeat_periods(f: torch.Tensor) -> torch.Tensor:
    """`[B, C, s, s]` -> `[B, 2, 2]` integer (dy, dx): the two translations, at least
    `PERIOD_MIN_ANGLE` apart and within `PERIOD_RANGE`, under which the image's detail
    (features minus their sigma-4 blur) best matches itself.

    Autocorrelation by FFT, zero-padded and divided by the overlap so that long shifts
    are not favoured or penalised for overlapping less.
    """
    s = f.shape[-1]
    z = f - gaussian_blur(f, 4.0)
    spec = torch.fft.rfft2(z, s=(2 * s, 2 * s))
    corr = torch.fft.irfft2(spec * spec.conj(), s=(2 * s, 2 * s)).sum(1)  # [B, 2s, 2s]
    ones = torch.fft.rfft2(torch.ones(s, s, dtype=f.dtype, device=f.device), s=(2 * s, 2 * s))
    corr = corr / torch.fft.irfft2(ones * ones.conj(), s=(2 * s, 2 * s)).clamp_min(1)
    d = torch.arange(2 * s, device=f.device)
    d = torch.where(d >= s, d - 2 * s, d).to(f.dtype)
    dy, dx = d[:, None].expand(2 * s, 2 * s).flatten(), d[None, :].expand(2 * s, 2 * s).flatten()
    r = torch.hypot(dy, dx)
    corr = corr.flatten(1).masked_fill(~((r >= PERIOD_RANGE[0]) & (r <= PERIOD_RANGE[1])), -torch.inf)
    first = corr.argmax(1)  # [B]
    angle = torch.atan2(dy, dx)  # [P]
    apart = (angle[None] - angle[first][:, None] + math.pi / 2) % math.pi - math.pi / 2
    second = corr.masked_fill(apart.abs() < math.radians(PERIOD_MIN_ANGLE), -torch.inf).argmax(1)
    return torch.stack([torch.stack([dy[i], dx[i]], -1) for i in (first, second)], 1).long()


def _shifted(f: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`[C, s, s]` -> the same with out[p] = f[p + (dy, dx)], NaN where that falls outside."""
    s = f.shape[-1]
    out = torch.full_like(f, float("nan"))
    y0, y1, x0, x1 = max(0, -dy), min(s, s - dy), max(0, -dx), min(s, s - dx)
    if y0 < y1 and x0 < x1:
        out[..., y0:y1, x0:x1] = f[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out


def repeat_residual(images: torch.Tensor) -> torch.Tensor:
    """Per-pixel difference from the image's own repeat. `[B, 3, S, S]` -> `[B, S, S]`.

    Each pixel is compared with its copies one period away, forward and back along both
    `repeat_periods` (and within 1 px of each), and keeps the best match. Taking the
    best of both directions means a defect's copies, which do match their own other
    neighbours, are not flagged: unlike the mirror, no ghost. On a part with no repeat
    every pixel matches badly, which the joint evidence takes the minimum with the
    mirror residual for.
    """
    bsz, _, full, _ = images.shape
    f = symmetry_features(F.interpolate(images, size=SIZE, mode="area"))
    periods = repeat_periods(f).tolist()
    discount = _edge_discount(f)
    out = []
    for b in range(bsz):
        best = torch.full(f.shape[-2:], torch.inf, dtype=f.dtype, device=f.device)
        for vy, vx in periods[b]:
            for sign in (1, -1):
                for oy in (-1, 0, 1):
                    for ox in (-1, 0, 1):
                        dy, dx = sign * vy + oy, sign * vx + ox
                        d = (f[b] - _shifted(f[b], dy, dx)).abs().sum(0) / _shifted(discount[b][None], dy, dx)[0]
                        best = torch.fmin(best, d)  # fmin: NaN (outside) loses
        out.append(torch.nan_to_num(best, posinf=0.0))
    return F.interpolate(torch.stack(out)[:, None], size=full, mode="bilinear", align_corners=False)[:, 0]
