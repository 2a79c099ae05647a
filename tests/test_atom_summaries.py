"""Per-atom summaries and artefact flags on hand-made tokens, checked against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spg_core.atoms.flags import border_bands, border_threshold, flag_mark, flag_stats, flagged_atoms
from spg_core.atoms.index import TokenChunk
from spg_core.atoms.summaries import (
    aux_first_pass,
    band_edges,
    bin_edges,
    jaccard,
    neighbours,
    num_bands,
    priority,
    sample_pass,
)
from spg_core.atoms.texture import blank_floor, gray_patch_std, patch_pixel_std
from spg_core.sae import TopKSAE

GRID = (8, 8)
N = GRID[0] * GRID[1]


def _chunks(tokens: torch.Tensor, per_chunk: int) -> list[TokenChunk]:
    """Whole images `[K, N, D]` cut into chunks of `per_chunk` images, as store_chunks yields them."""
    return [TokenChunk(lo, tokens[lo : lo + per_chunk]) for lo in range(0, tokens.shape[0], per_chunk)]


@pytest.fixture(scope="module")
def random_case():
    """A random SAE (D 12, M 24, k 5) over 30 random images of 64 patches, and its dense codes `[T, M]`."""
    gen = torch.Generator().manual_seed(3)
    sae = TopKSAE(12, 24, 5, seed=1)
    tokens = torch.randn(30, N, 12, generator=gen)
    with torch.no_grad():
        dense = sae.encode_dense(tokens.reshape(-1, 12))
    return sae, tokens, dense


def test_histogram_counts_equal_firing_counts_and_cofiring_is_exact(random_case):
    sae, tokens, dense = random_case
    first = aux_first_pass(_chunks(tokens, 7), sae, N)
    fire = (dense > 0).double()
    assert torch.equal(first["hist"].sum(1), fire.sum(0).long())
    assert torch.equal(first["cofire"], (fire.t() @ fire).long())
    mass = dense.double().reshape(30, N, -1).sum(0).t()
    torch.testing.assert_close(first["position_mass"], mass)
    assert torch.equal(first["image_count"], (dense.reshape(30, N, -1) > 0).any(1).sum(0))


def test_top_coactivating_neighbour_equals_direct_jaccard(random_case):
    sae, tokens, dense = random_case
    first = aux_first_pass(_chunks(tokens, 4), sae, N)
    ids, values = neighbours(jaccard(first["cofire"]))
    fire = (dense > 0).numpy()
    atom = int(np.argmax(fire.sum(0)))  # the most frequent atom: many co-firing partners
    inter = (fire[:, [atom]] & fire).sum(0)
    union = (fire[:, [atom]] | fire).sum(0)
    direct = np.where(union > 0, inter / np.maximum(union, 1), -1.0)
    direct[atom] = -1.0
    assert int(ids[atom, 0]) == int(np.argmax(direct))
    assert float(values[atom, 0]) == pytest.approx(direct.max())
    assert values[atom, 0] > 0  # the test compares a real partner


def test_every_band_sample_lies_in_its_band_and_is_a_real_activation(random_case):
    sae, tokens, dense = random_case
    first = aux_first_pass(_chunks(tokens, 5), sae, N)
    edges = band_edges(first["hist"])
    summary = sample_pass(_chunks(tokens, 5), sae, N, edges, top_p=4)
    codes = dense.reshape(30, N, -1)
    checked = 0
    for atom in range(sae.width):
        for band in range(num_bands() + 1):
            for s in summary.samples(atom, band):
                assert s["value"] == pytest.approx(float(codes[s["image"], s["patch"], atom]), rel=1e-6)
                if band < num_bands():
                    assert edges[atom, band] <= s["value"] < edges[atom, band + 1]
                checked += 1
    assert checked > 3 * sae.width  # most atoms fill several bands
    # the target-style top list equals the brute-force top activations
    for atom in range(sae.width):
        best = torch.sort(dense[:, atom], descending=True).values[:4]
        got = torch.tensor([t["value"] for t in summary.top(atom)] + [0.0] * (4 - len(summary.top(atom))))
        torch.testing.assert_close(got, best[: len(got)].float())


def test_band_samples_do_not_depend_on_the_chunking(random_case):
    sae, tokens, _ = random_case
    edges = band_edges(aux_first_pass(_chunks(tokens, 30), sae, N)["hist"])
    a = sample_pass(_chunks(tokens, 30), sae, N, edges)
    b = sample_pass(_chunks(tokens, 3), sae, N, edges)
    assert torch.equal(a.samples_image, b.samples_image) and torch.equal(a.samples_patch, b.samples_patch)


def test_band_edges_split_a_known_histogram_at_its_quartiles():
    hist = torch.zeros(1, len(bin_edges()) - 1, dtype=torch.long)
    hist[0, [10, 20, 30, 40]] = 5  # four equal blocks
    edges = band_edges(hist)[0].numpy()
    upper = bin_edges()[1:]
    assert edges[0] == 0 and np.isinf(edges[-1])
    np.testing.assert_allclose(edges[1:-1], upper[[10, 20, 30]])


def test_priority_is_uniform_enough_and_fixed():
    token = torch.arange(20000)
    p = priority(token, torch.full_like(token, 7))
    assert torch.equal(p, priority(token, torch.full_like(token, 7)))
    assert p.min() > 0 and p.max() <= 1
    assert abs(float(p.mean()) - 0.5) < 0.01  # 20,000 draws: standard error 0.002
    assert len(torch.unique(p)) > 19900


def _border_and_content_tokens(images: int = 40) -> tuple[TopKSAE, torch.Tensor]:
    """Atom 0 is written on the ring cells of every image (a border artefact), atom 1 on three random
    cells per image (content that moves); D = M = 4, k = 2, identity encoder."""
    sae = TopKSAE(4, 4, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(images, N, 4)
    ring = torch.from_numpy(border_bands(GRID)["ring"])
    tokens[:, ring, 0] = 1.0
    for i in range(images):
        cells = torch.randperm(N, generator=gen)[:3]
        tokens[i, cells, 1] = 2.0
    return sae, tokens


def test_a_border_atom_is_flagged_and_a_content_atom_is_not():
    sae, tokens = _border_and_content_tokens()
    first = aux_first_pass(_chunks(tokens, 16), sae, N)
    flags = flag_stats(first["position_mass"], first["image_count"], tokens.shape[0], GRID)
    assert flags.loc[0, "border_share"] == pytest.approx(1.0) and flags.loc[0, "border_band"] == "ring"
    assert "border" in flags.loc[0, "flags"].split(",")
    # atom 1 sits on each band about as often as the band's share of cells (ring 28 of 64, a side 8)
    assert flags.loc[1, "border_share"] < border_threshold(GRID, flags.loc[1, "border_band"])
    assert "border" not in flags.loc[1, "flags"].split(",")
    assert "fixed-position" not in flags.loc[1, "flags"]  # 3 random cells per image: spread over the grid
    assert np.isnan(flags.loc[2, "border_share"]) and flags.loc[2, "flags"] == ""  # never fires
    assert flags.loc[0, "labels"] == "dense"  # on every image, by construction: a label, not a flag
    assert flags.loc[0, "flags"] == "border"


def test_dense_is_shown_but_not_an_artefact_flag():
    sae, tokens = _border_and_content_tokens()
    tokens[:, :, 0] = 0.0
    tokens[:, 18:46, 0] = 1.0  # atom 0: 28 cells of every image (rows 2-5), mostly inner: 7% on each cell
    first = aux_first_pass(_chunks(tokens, 16), sae, N)
    flags = flag_stats(first["position_mass"], first["image_count"], tokens.shape[0], GRID)
    assert flags.loc[0, "labels"] == "dense" and flags.loc[0, "flags"] == ""
    assert flagged_atoms(flags.assign(atom=range(len(flags)))) == []  # not dropped with the flagged atoms
    assert flag_mark(flags.loc[0, "flags"], flags.loc[0, "labels"]) == " · dense"


def test_a_fixed_position_atom_is_flagged():
    sae, tokens = _border_and_content_tokens()
    tokens[:, :, 1] = 0.0
    tokens[:, 27, 1] = 1.0  # one inner cell, in every image, whatever else is there
    first = aux_first_pass(_chunks(tokens, 40), sae, N)
    flags = flag_stats(first["position_mass"], first["image_count"], tokens.shape[0], GRID)
    assert "fixed-position" in flags.loc[1, "flags"] and "border" not in flags.loc[1, "flags"]


def test_an_atom_on_one_side_a_row_in_is_flagged_and_a_content_atom_is_not():
    """The EfficientNet case: the first token row is calm and the edge effect sits on the second
    (asymmetric 'same' padding), along one side only; a one-cell ring would see none of it."""
    grid, images = (16, 16), 30  # band depth ceil(1.6) = 2 rows
    sae = TopKSAE(4, 4, 2)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
    gen = torch.Generator().manual_seed(0)
    tokens = torch.zeros(images, 256, 4)
    for i in range(images):
        tokens[i, 16 + torch.randperm(16, generator=gen)[:6], 0] = 1.0  # row 1, six random columns
        tokens[i, torch.randperm(256, generator=gen)[:6], 1] = 1.0  # anywhere
    first = aux_first_pass(_chunks(tokens, 10), sae, 256)
    flags = flag_stats(first["position_mass"], first["image_count"], images, grid)
    assert flags.loc[0, "border_band"] == "top" and flags.loc[0, "border_share"] == pytest.approx(1.0)
    assert "border" in flags.loc[0, "flags"].split(",")
    assert "border" not in flags.loc[1, "flags"].split(",")


def test_border_threshold_is_the_lift_on_each_grid():
    # 14 x 14, bands 2 deep: the ring holds 96 of 196 cells; 4x the mass per cell -> 384 / (384 + 100)
    assert border_threshold((14, 14)) == pytest.approx(384 / 484)
    # one side: 28 of 196 cells -> 112 / (112 + 168)
    assert border_threshold((14, 14), "top") == pytest.approx(112 / 280)
    # 28 x 28, bands 3 deep: one side 84 of 784 cells -> 336 / (336 + 700)
    assert border_threshold((28, 28), "left") == pytest.approx(336 / 1036)
    assert border_threshold((2, 2)) == 1.0  # all ring: never flagged below a full share


def test_flag_mark():
    assert flag_mark("border,blank") == " ⚑ border, blank"
    assert flag_mark("blank", "dense") == " ⚑ blank · dense"
    assert flag_mark("") == "" and flag_mark(None) == "" and flag_mark(float("nan")) == ""


def test_patch_std_is_zero_on_a_flat_cell_and_the_pixel_std_on_a_textured_one():
    pixels = torch.zeros(1, 3, 16, 16)
    pixels[0, :, :8, :8] = 0.3  # cell (0, 0) flat
    pixels[0, :, 8:, 8:] = (torch.arange(64).reshape(8, 8) % 2).float()  # cell (1, 1): 0/1 stripes, std 0.5
    std = gray_patch_std(pixels, (2, 2))
    torch.testing.assert_close(std, torch.tensor([[0.0, 0.0, 0.0, 0.5]], dtype=torch.float64))


def _flat_and_textured_images(root, images: int, side: int) -> tuple[list[dict], np.ndarray]:
    """PNG images of `side` px: the left quarter of grid columns one flat grey (a level per image), the
    rest uniform noise. Returns the store-like records and the `[N]` bool mask of the flat cells."""
    gen = np.random.default_rng(0)
    flat_cols = GRID[1] // 4
    cell = side // GRID[1]
    records = []
    for i in range(images):
        img = np.repeat(gen.integers(0, 256, size=(side, side, 1), dtype=np.uint8), 3, axis=2)  # grey noise
        img[:, : flat_cols * cell] = 40 + 5 * i
        path = root / f"{i:03d}.png"
        Image.fromarray(img).save(path)
        records.append({"image_path": str(path)})
    flat = np.zeros(GRID, dtype=bool)
    flat[:, :flat_cols] = True
    return records, flat.reshape(-1)


def test_an_atom_firing_only_on_flat_patches_is_flagged_blank_and_a_textured_one_is_not(tmp_path):
    images, side = 12, 64
    records, flat = _flat_and_textured_images(tmp_path, images, side)
    patch_std = patch_pixel_std(records, side, GRID, chunk_images=5)
    assert patch_std.shape == (images, N) and patch_std.dtype == torch.float16
    # uniform grey noise: std 0.29 (64 px a cell; lowest of the 576 measured 0.24), flat cells exactly 0
    assert float(patch_std[:, flat].max()) == 0.0 and float(patch_std[:, ~flat].min()) > 0.2
    floor = blank_floor(patch_std)  # a quarter of the patches are flat: the 10th percentile is 0
    sae, _ = _border_and_content_tokens(images)
    tokens = torch.zeros(images, N, 4)
    gen = torch.Generator().manual_seed(1)
    flat_ids, textured_ids = np.flatnonzero(flat), np.flatnonzero(~flat)
    for i in range(images):
        tokens[i, flat_ids[torch.randperm(len(flat_ids), generator=gen)[:3].numpy()], 0] = 1.0
        tokens[i, textured_ids[torch.randperm(len(textured_ids), generator=gen)[:3].numpy()], 1] = 2.0
    first = aux_first_pass(_chunks(tokens, 5), sae, N, patch_std)
    mass = first["position_mass"].sum(1)
    pixel_std = torch.where(mass > 0, first["std_mass"] / mass.clamp_min(1e-30), torch.nan)
    flags = flag_stats(first["position_mass"], first["image_count"], images, GRID, pixel_std, floor)
    assert flags.loc[0, "pixel_std"] == 0.0 and "blank" in flags.loc[0, "flags"].split(",")
    assert flags.loc[1, "pixel_std"] > 0.2 and "blank" not in flags.loc[1, "flags"].split(",")
    assert np.isnan(flags.loc[2, "pixel_std"]) and flags.loc[2, "flags"] == ""  # never fires
    unjudged = flag_stats(first["position_mass"], first["image_count"], images, GRID)  # no images: no blank
    assert not any("blank" in f for f in unjudged["flags"])
