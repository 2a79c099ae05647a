"""The weight-free `builtin` backbone: its colour-rarity cue behaves as documented."""

from __future__ import annotations

import torch

from spg_core.backbones.builtin import BuiltinBackbone, colour_codes, colour_rarity, pixel_channels, pooled_rarity


def _grey_with_spots(spots: list[tuple[int, int]], colour=(0.8, 0.1, 0.1), size: int = 256) -> torch.Tensor:
    """`[1, 3, S, S]` mid-grey image with 6 x 6 px spots of one colour at the given corners."""
    img = torch.full((1, 3, size, size), 0.5)
    gen = torch.Generator().manual_seed(0)
    img += 0.01 * torch.randn(img.shape, generator=gen)          # sensor noise
    for y, x in spots:
        img[0, :, y:y + 6, x:x + 6] = torch.tensor(colour).view(3, 1, 1)
    return img.clamp(0, 1)


def _rarity(img: torch.Tensor) -> torch.Tensor:
    return colour_rarity(colour_codes(pixel_channels(img)), patch=8)[0]


def test_a_unique_colour_is_rare_and_ordinary_ones_are_not():
    r = _rarity(_grey_with_spots([(100, 100)]))
    spot, background = r[101:105, 101:105], r[10:90, 10:90]
    assert spot.min() > background.max() + 3          # e^3 = 20x less likely than any grey pixel
    assert background.std() < 0.2                     # noise alone does not make grey pixels rare


def test_a_spot_does_not_explain_itself_but_a_distant_twin_does():
    """Pixels within the excluded neighbourhood are not look-alikes; the same colour far away is."""
    alone = _rarity(_grey_with_spots([(100, 100)]))[101:105, 101:105].mean()
    twins = _rarity(_grey_with_spots([(100, 100), (20, 200)]))[101:105, 101:105].mean()
    near = _rarity(_grey_with_spots([(100, 100), (100, 112)]))[101:105, 101:105].mean()
    assert twins < alone - 1          # 36 distant look-alike pixels (spread over 27 bins) count
    assert near == alone              # a look-alike within 2 patches does not count


def test_pooled_rarity_keeps_thin_spots_in_the_max_and_erodes_edge_bands():
    r = torch.zeros(1, 16, 16)
    r[0, 2, :8] = 10.0                # a 1-px line of rare pixels across the first patch row
    r[0, 8:14, 8:14] = 10.0           # a 6 x 6 blob in the last patch
    mean, peak, eroded_mean, eroded_peak = pooled_rarity(r, 8)[0].t()
    assert peak[0] == 10 and eroded_peak[0] == 0      # the line: kept by max, dropped by erosion
    assert eroded_peak[3] == 10                       # the blob survives erosion
    assert mean[3] > mean[0]


def test_builtin_tokens_layout():
    bb = BuiltinBackbone()
    tokens = bb(_grey_with_spots([(100, 100)]))
    assert tokens.shape == (1, 1024, bb.dim) and bb.dim == 74
    assert torch.all(tokens[..., 0] == 1)              # the constant channel
    rarity_max = tokens[0, :, 14].view(32, 32)         # raw max-pooled colour rarity (after 1 + 12 + mean)
    assert rarity_max.flatten().argmax().item() in {12 * 32 + 12, 12 * 32 + 13, 13 * 32 + 12, 13 * 32 + 13}
