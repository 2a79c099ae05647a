"""The weight-free `builtin` backbone: its colour, symmetry and joint cues behave as documented."""

from __future__ import annotations

import math

import pytest
import torch

from spg_core.backbones.builtin import (
    BuiltinBackbone,
    colour_bag_similarity,
    colour_codes,
    colour_rarity,
    pixel_channels,
    pooled_map,
)
from spg_core.backbones.symmetry import (
    SIZE,
    foreground,
    mirror_residual,
    repeat_periods,
    repeat_residual,
    symmetry_features,
)

DESC = 0.02  # builtin's descriptor scale: token channels 2.. are descriptors x DESC


def _grey_with_spots(spots: list[tuple[int, int]], colour=(0.8, 0.1, 0.1), size: int = 256) -> torch.Tensor:
    """`[1, 3, S, S]` mid-grey image with 6 x 6 px spots of one colour at the given corners."""
    img = torch.full((1, 3, size, size), 0.5)
    gen = torch.Generator().manual_seed(0)
    img += 0.01 * torch.randn(img.shape, generator=gen)  # sensor noise
    for y, x in spots:
        img[0, :, y : y + 6, x : x + 6] = torch.tensor(colour).view(3, 1, 1)
    return img.clamp(0, 1)


def _rarity(img: torch.Tensor) -> torch.Tensor:
    return colour_rarity(colour_codes(pixel_channels(img)), patch=8)[0]


def test_a_unique_colour_is_rare_and_ordinary_ones_are_not():
    r = _rarity(_grey_with_spots([(100, 100)]))
    spot, background = r[101:105, 101:105], r[10:90, 10:90]
    assert spot.min() > background.max() + 3  # e^3 = 20x less likely than any grey pixel
    assert background.std() < 0.2  # noise alone does not make grey pixels rare


@pytest.mark.slow  # 43 s on the 2-core VM, 2026-12-07: out of the quick tier
def test_a_spot_does_not_explain_itself_but_a_distant_twin_does():
    """Pixels within the excluded neighbourhood are not look-alikes; the same colour far away is."""
    alone = _rarity(_grey_with_spots([(100, 100)]))[101:105, 101:105].mean()
    twins = _rarity(_grey_with_spots([(100, 100), (20, 200)]))[101:105, 101:105].mean()
    near = _rarity(_grey_with_spots([(100, 100), (100, 112)]))[101:105, 101:105].mean()
    assert twins < alone - 1  # 36 distant look-alike pixels (spread over 27 bins) count
    assert near == alone  # a look-alike within 2 patches does not count


def test_pooled_map_keeps_thin_spots_in_the_max_and_erodes_edge_bands():
    r = torch.zeros(1, 16, 16)
    r[0, 2, :8] = 10.0  # a 1-px line of rare pixels across the first patch row
    r[0, 8:14, 8:14] = 10.0  # a 6 x 6 blob in the last patch
    mean, peak, _eroded_mean, eroded_peak = pooled_map(r, 8)[0].t()
    assert peak[0] == 10 and eroded_peak[0] == 0  # the line: kept by max, dropped by erosion
    assert eroded_peak[3] == 10  # the blob survives erosion
    assert mean[3] > mean[0]


def test_builtin_tokens_layout():
    bb = BuiltinBackbone()
    tokens = bb(_grey_with_spots([(100, 100)]))
    assert tokens.shape == (1, 1024, bb.dim) and bb.dim == 87
    assert torch.all(tokens[..., 0] == 1)  # the constant channel
    rarity_max = tokens[0, :, 15].view(32, 32)  # raw max-pooled colour rarity (1 + joint + 12 + mean)
    assert rarity_max.flatten().argmax().item() in {12 * 32 + 12, 12 * 32 + 13, 13 * 32 + 12, 13 * 32 + 13}
    assert 2.5 * DESC < rarity_max.median() < 4 * DESC  # the most common colour: -log p ~ 3.4, scaled


def _tilted_part(theta: float, marks: list[tuple[float, float]], size: int = 256) -> torch.Tensor:
    """`[1, 3, S, S]`: a yellow bar with round ends on grey-green, its long axis at `theta`,
    centred off the image centre, with dark 5-px dots at (u, v) in the bar's own frame
    (u along the axis, v across it)."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cx, cy = 140.0, 118.0
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    v = -(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)
    bar = (torch.hypot(u - u.clamp(-60, 60), v) < 26).float()
    img = torch.tensor([0.55, 0.6, 0.5]).view(3, 1, 1) * (1 - bar) + torch.tensor([0.9, 0.75, 0.2]).view(3, 1, 1) * bar
    for mu, mv in marks:
        img = img * (1 - 0.8 * (torch.hypot(u - mu, v - mv) < 2.5).float())
    gen = torch.Generator().manual_seed(1)
    return (img + 0.01 * torch.randn(img.shape, generator=gen)).clamp(0, 1)[None]


def _near(m: torch.Tensor, theta: float, u: float, v: float, cx: float = 140.0, cy: float = 118.0) -> float:
    """Max of `[S, S]` map `m` within 4 px of the point (u, v) of the bar's frame."""
    x = cx + u * math.cos(theta) - v * math.sin(theta)
    y = cy + u * math.sin(theta) + v * math.cos(theta)
    return float(m[int(y) - 4 : int(y) + 5, int(x) - 4 : int(x) + 5].max())


def test_mirror_residual_finds_a_tilted_axis_and_flags_only_what_breaks_the_symmetry():
    theta = 0.7  # 40 degrees: off the pixel grid
    on_axis = [(20.0, 0.0), (35.0, 0.0)]  # printed marks on the axis: symmetric
    sym = mirror_residual(_tilted_part(theta, on_axis))[0]
    broken = mirror_residual(_tilted_part(theta, on_axis + [(-30.0, 12.0)]))[0]
    assert sym.quantile(0.999) < 0.3  # the whole part is explained by its mirror
    assert _near(sym, theta, 20, 0) < 0.5  # the marks too (edges misalign a little)
    assert _near(broken, theta, -30, 12) > 1.0  # a dot with no mirror twin is not
    assert _near(broken, theta, 20, 0) < 0.5


@pytest.mark.slow  # 21 s on the 2-core VM, 2026-12-07: out of the quick tier
def test_mirror_residual_explains_what_colour_rarity_flags():
    """A unique mark on the axis is rare in colour but symmetric: the two cues disagree,
    which is what lets the guides tell printed marks from defects."""
    img = _tilted_part(0.0, [(30.0, 0.0)])
    rarity, mirror = _rarity(img), mirror_residual(img)[0]
    assert _near(rarity, 0.0, 30, 0) > rarity.median() + 3
    assert _near(mirror, 0.0, 30, 0) < 0.5


def test_joint_evidence_ranks_a_broken_symmetry_above_a_symmetric_unique_mark():
    """Token channel 1 is the AND of the cues: a mark on the axis and a stray dot are both
    rare in colour, only the dot is asymmetric."""
    theta = 0.0
    tokens = BuiltinBackbone()(_tilted_part(theta, [(30.0, 0.0), (-30.0, 12.0)]))[0]
    joint = tokens[:, 1]
    sim, rarity, symmetry, bag = (tokens[:, a:b] / DESC for a, b in ((2, 14), (14, 18), (18, 22), (22, 30)))
    product = sim.mean(-1) * bag.mean(-1) * rarity[:, 1] * symmetry[:, 1]
    assert torch.allclose(joint, product.pow(0.25), rtol=1e-4, atol=1e-5)
    grid = joint.view(32, 32)
    mark = max(float(grid[(118 + dy) // 8, (170 + dx) // 8]) for dy in (-3, 3) for dx in (-3, 3))
    dot = max(float(grid[(130 + dy) // 8, (110 + dx) // 8]) for dy in (-3, 3) for dx in (-3, 3))
    rar = rarity[:, 1].view(32, 32)
    assert rar[118 // 8, 170 // 8] > rar.median() + 2 and rar[130 // 8, 110 // 8] > rar.median() + 2
    assert dot == float(grid.max()) and dot > 1.5 * mark  # measured 1.8x (the product: 10x)


def test_mirror_residual_flags_a_bite_out_of_the_outline():
    """The bitten-out pixels have the background's colour, so they are not foreground
    themselves; the foreground is grown past the part's outline so that they still count."""
    theta = 0.0
    img = _tilted_part(theta, [])
    yy, xx = torch.meshgrid(torch.arange(256).float(), torch.arange(256).float(), indexing="ij")
    bite = torch.hypot(xx - 180, yy - 92) < 10  # into the top edge, off both axes
    img[0, :, bite] = torch.tensor([0.55, 0.6, 0.5]).view(3, 1)
    residual = mirror_residual(img)[0]
    bitten = float(residual[92:100, 172:188].max())
    assert bitten == float(residual.max()) and bitten > 0.5
    assert float(residual[100:136, 90:190].quantile(0.99)) < bitten / 4  # the intact body (measured 1/7)


def test_mirror_axis_centroid_is_taken_before_growing_the_foreground():
    """A horizontal bar whose two long edges fall differently on the half-resolution grid:
    the long axis must still win (a centroid 0.2 px off made the short axis win)."""
    x = torch.nn.functional.interpolate(_tilted_part(0.0, []), size=SIZE, mode="area")
    core, grown = foreground(x)
    t = torch.arange(SIZE).float()
    cy = float((core[0].sum(1) * t).sum() / core[0].sum())
    assert abs(cy - (118 - 0.5) / 2) < 0.05
    assert grown[0].sum() > 1.2 * core[0].sum()
    # a mark on the long axis is then explained by the mirror
    assert _near(mirror_residual(_tilted_part(0.0, [(30.0, 0.0)]))[0], 0.0, 30, 0) < 0.5


def _woven(period: int = 24, size: int = 256, flaw: tuple[int, int] | None = None) -> torch.Tensor:
    """`[1, 3, S, S]`: a blue checkerboard of `period`-px cells with a shaded bump in each, and
    optionally an 8 x 8 px brown flaw with its corner at `flaw`."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cell = ((yy // (period // 2) + xx // (period // 2)) % 2).float()
    bump = torch.cos(2 * math.pi * xx / period) * torch.cos(2 * math.pi * yy / period)
    lum = 0.35 + 0.3 * cell + 0.05 * bump
    img = torch.stack([0.5 * lum, 0.7 * lum, lum])
    if flaw is not None:
        y, x = flaw
        img[:, y : y + 8, x : x + 8] = torch.tensor([0.45, 0.3, 0.15]).view(3, 1, 1)
    gen = torch.Generator().manual_seed(3)
    return (img + 0.01 * torch.randn(img.shape, generator=gen)).clamp(0, 1)[None]


def test_repeat_periods_find_the_weave_and_the_residual_flags_only_the_flaw():
    x = torch.nn.functional.interpolate(_woven(), size=SIZE, mode="area")
    periods = repeat_periods(symmetry_features(x))[0].abs().tolist()
    # at half resolution the checkerboard repeats every 12 px along each axis and along the diagonals
    assert all(sorted(p) in ([0, 12], [6, 6], [12, 12]) for p in periods), periods
    residual = repeat_residual(_woven(flaw=(100, 140)))[0]
    flaw = float(residual[102:106, 142:146].min())
    assert flaw > 10 * float(residual.quantile(0.99))
    # No ghost: the cells one period away are matched by their other neighbours.
    for dy, dx in ((0, 24), (0, -24), (24, 0), (-24, 0)):
        assert float(residual[102 + dy : 106 + dy, 142 + dx : 146 + dx].max()) < flaw / 5


def _speckle(size: int = 256, odd: tuple[int, int] | None = None) -> torch.Tensor:
    """`[1, 3, S, S]`: 2-px speckles of three colours, mixed 60/30/10; optionally a 32 x 32 px
    square at `odd` of the commonest colour alone: no colour of its own, only a
    missing share of the speckle (as where texture is worn or missing)."""
    gen = torch.Generator().manual_seed(4)
    u = torch.rand(size // 2, size // 2, generator=gen).repeat_interleave(2, 0).repeat_interleave(2, 1)
    shares = torch.tensor([0.6, 0.9]).view(2, 1, 1).expand(2, size, size).clone()
    if odd is not None:
        y, x = odd
        shares[:, y : y + 32, x : x + 32] = 1.0
    which = (u[None] > shares).sum(0)  # 0, 1 or 2
    palette = torch.tensor([[0.8, 0.75, 0.7], [0.75, 0.45, 0.45], [0.15, 0.15, 0.15]])
    return palette[which].permute(2, 0, 1)[None]


def test_colour_bag_similarity_flags_a_changed_mix_of_ordinary_colours():
    """The square has no colour of its own, so colour rarity cannot single it out (its
    colours are the commonest); the share of each colour in it is what differs."""
    img = _speckle(odd=(96, 160))
    channels = pixel_channels(img)
    bag = colour_bag_similarity(channels, 8, BuiltinBackbone()._near)[0].mean(-1).view(32, 32)
    inside, outside = bag[13:15, 21:23], torch.ones(32, 32, dtype=torch.bool)
    outside[10:18, 18:26] = False
    assert float(inside.min()) > float(bag[outside].quantile(0.99))
    rarity = pooled_map(colour_rarity(colour_codes(channels), 8), 8)[0, :, 0].view(32, 32)
    assert float(rarity[13:15, 21:23].mean()) < float(rarity[outside].median())


def test_self_similarity_does_not_single_out_the_border_of_a_uniform_texture():
    """Border patches average their context over fewer neighbours, so their look-alikes are
    all farther; with one image-wide median the ring of a uniform speckle scored 3.5x the
    interior (context channels) and 1.6x (colour bags)."""
    tokens = BuiltinBackbone()(_speckle())[0]
    ring = torch.zeros(32, 32, dtype=torch.bool)
    ring[0] = ring[-1] = ring[:, 0] = ring[:, -1] = True
    ring = ring.flatten()
    context, bag = tokens[:, 10:14].mean(-1), tokens[:, 22:30].mean(-1)
    assert context[ring].mean() < 1.5 * context[~ring].mean()
    assert bag[ring].mean() < 1.2 * bag[~ring].mean()


def test_mirror_residual_explains_a_sharp_mark_on_the_axis_but_not_a_faint_stain():
    """A white tick on a disc's axis, whose centre is off the pixel grid: the mirror image
    misaligns its sharp edges by a fraction of a pixel. Without the edge discount that
    left the tick at 0.6x a 25 % stain's residual; with it, 0.11x."""
    yy, xx = torch.meshgrid(torch.arange(256).float(), torch.arange(256).float(), indexing="ij")
    cx, cy = 128.3, 127.6
    body = (70 - torch.hypot(xx - cx, yy - cy)).clamp(0, 1)
    img = (
        torch.tensor([0.25, 0.25, 0.28]).view(3, 1, 1) * (1 - body) + torch.tensor([0.8, 0.3, 0.2]).view(3, 1, 1) * body
    )
    tick = (2.5 - (xx - cx).abs()).clamp(0, 1) * ((yy > cy - 50) & (yy < cy - 25)).float()
    img = img * (1 - tick) + torch.tensor([0.95, 0.95, 0.9]).view(3, 1, 1) * tick
    img = img * (1 - 0.25 * torch.exp(-((xx - cx - 35) ** 2 + (yy - cy - 20) ** 2) / (2 * 8.0**2)))
    residual = mirror_residual(img[None])[0]
    stain = float(residual[138:158, 153:173].max())
    assert stain == float(residual.max())
    assert float(residual[76:105, 122:134].max()) < stain / 4
