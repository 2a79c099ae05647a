"""Atom interpretation on a tiny real run (synthetic-a -> synthetic-b, builtin backbone, M = 128).

The run is built once per module with the real pipeline (~1-2 min on 2 CPU cores: synthetic
data, builtin extraction of both groups, SAE and guides); every test below reads it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from spg_core.atomic import save_tensors, write_json
from spg_core.atoms import (
    Ablator,
    TokenChunk,
    atom_activation,
    atom_heatmap,
    atom_stats,
    attribute,
    build_atom_index,
    build_atoms,
    load_atoms,
    patch_box,
    patch_crop,
    rank_atoms,
    stream_top_p,
    tag_atoms,
    top_atoms_per_image,
    top_atoms_per_patch,
)
from spg_core.atoms.build import SUMMARIES, ensure_summaries
from spg_core.atoms.index import patch_mask_fraction, store_chunks
from spg_core.atoms.stats import TAGS, load_stats, save_stats
from spg_core.atoms.summaries import load_summaries
from spg_core.cli import main as spg_main
from spg_core.config import ExtractConfig, GuideConfig, RunConfig, SAEConfig
from spg_core.errors import SPGError
from spg_core.images import load_image
from spg_core.inference import Predictor
from spg_core.pipeline import run_experiment
from spg_core.runs import RunDir
from spg_core.scoring import cosine_logits
from spg_core.store import TokenStore, pack_masks

TOP_P = 16


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atoms")
    cfg = RunConfig(
        aux="synthetic-a",
        target="synthetic-b",
        backbone="builtin",
        device="cpu",
        sae=SAEConfig(width=128, k=8, epochs=2),
        guides=GuideConfig(epochs=2),
    )
    run_experiment(cfg, root / "run", ExtractConfig(quiet=True))  # session cache: shared synthetic data and stores
    return root / "run"


@pytest.fixture(scope="module")
def predictor(run_dir) -> Predictor:
    return Predictor(run_dir, device="cpu")


@pytest.fixture(scope="module")
def aux(predictor) -> TokenStore:
    return TokenStore(predictor.config_json["aux_store"])


@pytest.fixture(scope="module")
def built(run_dir):
    """build_atoms once; returns (index, stats) as loaded back from disk."""
    build_atoms(run_dir, progress=False, top_p=TOP_P, device="cpu")
    return load_atoms(run_dir)


@pytest.fixture(scope="module")
def small_store(aux, tmp_path_factory) -> TokenStore:
    """The first 20 auxiliary images re-written as a store of 3 shards (7 + 7 + 6 images)."""
    root = tmp_path_factory.mktemp("small_store")
    n = 20
    shards = []
    for start in range(0, n, 7):
        idx = list(range(start, min(start + 7, n)))
        name = f"shard_{start // 7:05d}.safetensors"
        save_tensors(
            root / name,
            {"tokens": aux.tokens(idx).to(torch.float16), "masks": torch.from_numpy(pack_masks(aux.masks(idx)))},
        )
        shards.append({"file": name, "start": start, "count": len(idx)})
    write_json(
        root / "manifest.json",
        {
            "key": aux.manifest["key"],
            "complete": True,
            "shard_images": 7,
            "images": aux.images[:n],
            "skipped": 0,
            "shards": shards,
        },
    )
    return TokenStore(root)


def _brute_force_index(store: TokenStore, sae, top_p: int):
    """Dense codes of every token at once; per atom the top_p positive values (ties: earlier token)."""
    with torch.no_grad():
        dense = sae.encode_dense(store.tokens(range(store.num_images)).reshape(-1, store.dim)).numpy()
    frac = patch_mask_fraction(store.masks(range(store.num_images)), store.grid).reshape(-1).numpy()
    m = dense.shape[1]
    values = np.zeros((m, top_p), np.float32)
    token = np.full((m, top_p), -1)
    for j in range(m):
        col = dense[:, j]
        order = np.lexsort((np.arange(len(col)), -col))
        order = order[col[order] > 0][:top_p]
        values[j, : len(order)] = col[order]
        token[j, : len(order)] = order
    return dense, frac, values, token


# -- 1. ranking ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dead_atoms_are_never_ranked(predictor, run_dir, capsys):
    """The SAE's dead-atom mask (atoms that never fire on the auxiliary set) is saved with it and
    zeroes those atoms in both guides, so neither `rank_atoms` nor `spg atoms` can list one.
    Measured on this run (builtin, M 128, k 8, 2 epochs): a non-empty mask."""
    dead = predictor.sae.dead
    assert dead is not None and int(dead.sum()) == json_dead(run_dir) > 0
    ranked = rank_atoms(predictor.guides)
    listed = {a["atom"] for guide in ("anomaly", "normal") for a in ranked[guide]}
    assert listed and not listed & set(dead.nonzero().flatten().tolist())


def json_dead(run_dir) -> int:
    return json.loads((Path(run_dir) / "sae.json").read_text())["dead_atoms"]


@pytest.mark.slow
def test_ranking_is_sorted_and_shares_sum_to_one(predictor):
    ranked = rank_atoms(predictor.guides)
    coef = predictor.guides.coefficients()
    a_n, a_a = predictor.guides.active_atoms()
    for guide, row, active in (("anomaly", 1, a_a), ("normal", 0, a_n)):
        entries = ranked[guide]
        assert sorted(e["atom"] for e in entries) == sorted(active.tolist())
        coefs = [e["coef"] for e in entries]
        assert coefs == sorted(coefs, reverse=True)
        assert sum(e["share"] for e in entries) == pytest.approx(1.0, abs=1e-9)
        top = entries[0]
        assert top["coef"] == pytest.approx(float(coef[row, top["atom"]]))


# -- 2. attribution --------------------------------------------------------------------------------


@pytest.mark.slow
def test_contributions_sum_to_logits(predictor):
    store = TokenStore(predictor.config_json["target_store"])
    tokens = store.tokens([0, 5, 40])
    attr = attribute(tokens, predictor.dictionary, predictor.guides, tau=predictor.cfg.guides.tau)
    g = predictor.guides.guide_vectors(predictor.dictionary).detach()
    torch.testing.assert_close(attr.logit_a, cosine_logits(tokens, g[1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(attr.logit_n, cosine_logits(tokens, g[0]), atol=1e-5, rtol=0)
    probs, _, _ = predictor.scorer(tokens)
    torch.testing.assert_close(attr.probs, probs, atol=1e-5, rtol=0)
    _atoms, net = attr.net()
    torch.testing.assert_close(net.sum(-1), attr.logit_a - attr.logit_n, atol=1e-5, rtol=0)
    assert attr.contrib_a.shape == (3, store.num_patches, len(predictor.guides.active_atoms()[1]))


@pytest.mark.slow
def test_top_atoms_per_patch_and_image(predictor):
    store = TokenStore(predictor.config_json["target_store"])
    attr = attribute(store.tokens([1, 2]), predictor.dictionary, predictor.guides)
    ids, vals = top_atoms_per_patch(attr, "anomaly", k=3)
    assert ids.shape == vals.shape == (2, store.num_patches, 3)
    assert (vals[..., :-1] >= vals[..., 1:]).all()
    pos = torch.searchsorted(attr.atoms_a, ids)  # atoms_a is sorted (nonzero order)
    torch.testing.assert_close(attr.contrib_a.gather(-1, pos), vals)
    img_ids, img_vals = top_atoms_per_image(attr, "anomaly", k=4)
    w = attr.probs / attr.probs.sum(1, keepdim=True)
    expected = (w[..., None] * attr.contrib_a).sum(1)
    best = expected.argmax(-1)
    assert img_ids[:, 0].tolist() == attr.atoms_a[best].tolist()
    torch.testing.assert_close(img_vals[:, 0], expected.max(-1).values)


@pytest.mark.slow
def test_attribution_of_a_new_image(predictor, aux):
    image = load_image(aux.images[3]["image_path"])
    out = predictor.predict_images([image])
    attr = attribute(out["tokens"], predictor.dictionary, predictor.guides, tau=predictor.cfg.guides.tau)
    torch.testing.assert_close(attr.probs, out["probs"], atol=1e-5, rtol=0)


# -- 3. streaming index ------------------------------------------------------------------------------


@pytest.mark.slow
def test_streaming_index_equals_brute_force(predictor, small_store):
    sae = predictor.sae
    # 3000 tokens -> 2 images (of 1024 patches) per chunk: chunks straddle nothing, shards hold 7, 7, 6.
    index = build_atom_index(small_store, sae, top_p=TOP_P, device="cpu", chunk_tokens=3000)
    dense, frac, values, token = _brute_force_index(small_store, sae, TOP_P)
    assert torch.equal(index.values, torch.from_numpy(values))
    n = small_store.num_patches
    filled = token >= 0
    assert np.array_equal(index.image.numpy(), np.where(filled, token // n, -1))
    assert np.array_equal(index.patch.numpy(), np.where(filled, token % n, -1))
    assert np.allclose(index.mask_fraction.numpy(), np.where(filled, frac[np.maximum(token, 0)], 0))
    c = index.counts
    assert c.num_tokens == dense.shape[0]
    assert np.array_equal(c.fire_count.numpy(), (dense > 0).sum(0))
    np.testing.assert_allclose(c.act_sum.numpy(), dense.astype(np.float64).sum(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        c.masked_sum.numpy(), (dense.astype(np.float64) * frac[:, None]).sum(0), rtol=1e-9, atol=1e-9
    )
    assert c.category_mass.sum().item() == pytest.approx(c.act_sum.sum().item())
    assert c.mask_total == pytest.approx(float(frac.sum()))
    assert (index.values > 0).sum() > index.width  # the test compares real entries


@pytest.mark.slow
def test_memory_is_bounded_by_chunks(predictor, small_store):
    sae = predictor.sae
    seen: list[int] = []
    original = sae.encode

    def encode(x):
        seen.append(x.shape[0])
        return original(x)

    sae.encode = encode  # instance attribute: this object only
    try:
        small = build_atom_index(small_store, sae, top_p=TOP_P, device="cpu", chunk_tokens=1024)
    finally:
        del sae.encode
    assert max(seen) <= 1024 and len(seen) == small_store.num_images
    whole = build_atom_index(small_store, sae, top_p=TOP_P, device="cpu", chunk_tokens=10**9)
    for name in ("values", "image", "patch", "mask_fraction"):
        assert torch.equal(getattr(small, name), getattr(whole, name))
    assert small.values.shape == (sae.width, TOP_P)


@pytest.mark.slow
def test_stream_top_p_on_a_plain_iterator(predictor, small_store):
    """The streaming core runs on any iterator of chunks (what the benchmark feeds it)."""
    sae = predictor.sae
    chunks = (
        TokenChunk(c.start_image, torch.from_numpy(np.array(c.tokens)), c.mask_fraction, c.category)
        for c in store_chunks(small_store, 4096)
    )
    acc, _counts = stream_top_p(
        chunks, sae, top_p=4, num_patches=small_store.num_patches, num_categories=len(small_store.categories)
    )
    _, _, values, token = _brute_force_index(small_store, sae, 4)
    assert torch.equal(acc.values, torch.from_numpy(values))
    assert torch.equal(acc.token, torch.from_numpy(token))


# -- 4. heatmaps and crops -------------------------------------------------------------------------


@pytest.mark.slow
def test_heatmap_peaks_at_the_most_active_patch(predictor, aux, built):
    index, _ = built
    atom = int(index.values[:, 0].argmax())
    image = int(index.image[atom, 0])
    tokens = aux.tokens([image])[0]
    act = atom_activation(predictor.sae, tokens, atom)
    assert int(act.argmax()) == int(index.patch[atom, 0])
    assert float(act.max()) == pytest.approx(float(index.values[atom, 0]), rel=1e-6)
    heat = atom_heatmap(predictor.sae, tokens, atom, aux.grid, aux.image_size)
    assert heat.shape == (aux.image_size, aux.image_size)
    y, x = divmod(int(heat.argmax()), aux.image_size)
    h, w = aux.grid
    assert (y * h // aux.image_size) * w + x * w // aux.image_size == int(act.argmax())
    assert float(heat.max()) <= float(act.max()) + 1e-6


@pytest.mark.slow
def test_patch_crop_geometry(aux):
    size, grid = aux.image_size, aux.grid
    cell = size // grid[1]
    assert patch_box(0, grid, size) == (0, 0, cell, cell)
    assert patch_box(grid[1] + 1, grid, size, context=1) == (0, 0, 3 * cell, 3 * cell)
    last = grid[0] * grid[1] - 1
    assert patch_box(last, grid, size, context=2) == (size - 5 * cell, size - 5 * cell, size, size)
    image = load_image(aux.images[0]["image_path"])
    crop = patch_crop(image, last, grid, size, context=2, out=80, outline=(255, 0, 0))
    assert crop.size == (80, 80) and crop.mode == "RGB"
    assert patch_crop(image, 5, grid, size, context=1).size == (3 * cell, 3 * cell)


# -- 5. statistics and tags ------------------------------------------------------------------------


@pytest.mark.slow
def test_stats_columns_are_in_range_and_consistent(built, predictor, aux):
    index, stats = built
    assert len(stats) == index.width and stats["atom"].tolist() == list(range(index.width))
    live = stats[stats["tag"] != "dead"]
    assert len(live) > 0 and set(stats["tag"]) <= set(TAGS)
    assert ((stats["frequency"] >= 0) & (stats["frequency"] <= 1)).all()
    assert ((live["selectivity"] >= 0) & (live["selectivity"] <= 1)).all()
    assert ((live["category_entropy"] >= 0) & (live["category_entropy"] <= 1 + 1e-12)).all()
    assert (live["top_patch_entropy"] >= 0).all()
    assert (stats["frequency"] == 0).eq(stats["tag"] == "dead").all()
    assert (live["max_activation"] >= live["mean_activation"] - 1e-6).all()
    assert stats["tag"].tolist() == tag_atoms(stats).tolist()
    assert {"class-general", "class-specific"} <= set(stats["tag"])
    for _, row in stats.iterrows():  # defect kinds are counted over the in-mask top patches
        assert sum(row["top_defects"].values()) == row["in_mask_top"]
        assert sum(row["top_categories"].values()) == int((index.image[row["atom"]] >= 0).sum())
    # selectivity and frequency of the most frequent atom, computed directly
    atom = int(stats["frequency"].idxmax())
    act = atom_activation(predictor.sae, aux.tokens(range(aux.num_images)), atom).reshape(-1).double()
    frac = patch_mask_fraction(aux.masks(range(aux.num_images)), aux.grid).reshape(-1).double()
    assert stats.loc[atom, "selectivity"] == pytest.approx(float((act * frac).sum() / act.sum()), rel=1e-6)
    assert stats.loc[atom, "frequency"] == pytest.approx(float((act > 0).double().mean()))


def test_tag_rule_on_hand_made_rows():
    df = pd.DataFrame(
        {
            "frequency": [0.0, 0.1, 0.1, 0.1, 0.1],
            "top_category_share": [np.nan, 0.8, 0.3, 0.3, 0.5],
            "lift": [np.nan, 10.0, 3.0, 1.0, 0.0],
        }
    )
    assert tag_atoms(df).tolist() == ["dead", "class-specific", "class-general", "shared", "class-specific"]


# -- 6. ablation -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ablator(predictor) -> Ablator:
    return Ablator(predictor)


@pytest.mark.slow
def test_empty_ablation_reproduces_the_run(ablator, run_dir):
    probs, scores, _ = RunDir(run_dir).read_target()
    base = ablator.ablate()
    torch.testing.assert_close(base.scores, scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(base.probs, probs.reshape(len(probs), -1), atol=1e-3, rtol=0)  # stored fp16
    stored = RunDir(run_dir).read_metrics()["mean"]
    for key, value in stored.items():
        assert base.metrics["mean"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_ablations_change_what_they_should(ablator, predictor):
    base = ablator.baseline()
    anomaly = [a["atom"] for a in rank_atoms(predictor.guides)["anomaly"]]
    gone = ablator.ablate(remove=anomaly, metrics=False)
    assert gone.metrics is None
    assert (gone.probs - base.probs).abs().max() > 1e-2
    assert (gone.coefficients[1] == 0).all() and torch.equal(gone.coefficients[0], base.coefficients[0])
    # cosine scoring ignores the guide's scale: doubling every anomaly coefficient changes nothing
    doubled = ablator.ablate(scale={j: 2.0 for j in anomaly}, metrics=False)
    torch.testing.assert_close(doubled.probs, base.probs, atol=1e-6, rtol=0)
    # Removing one atom zeroes exactly that coefficient and moves the maps. (Its effect need not be
    # smaller than removing every anomaly atom: the cosine renormalises the remaining guide.)
    one = ablator.ablate(remove=anomaly[:1], metrics=False)
    assert (one.probs - base.probs).abs().max() > 0
    changed = (one.coefficients[1] != base.coefficients[1]).nonzero().flatten()
    assert len(changed) == 1 and one.coefficients[1, changed[0]] == 0
    assert int(ablator.atoms[changed[0]]) == anomaly[0]  # columns are Ablator.atoms
    inactive = sorted(set(range(predictor.sae.width)) - set(anomaly))
    if inactive:
        with pytest.raises(SPGError, match="not active"):
            ablator.ablate(remove=inactive[:1])
    with pytest.raises(SPGError, match="finite"):
        ablator.ablate(scale={anomaly[0]: -1.0})


# -- persistence, errors, CLI ----------------------------------------------------------------------


@pytest.mark.slow
def test_save_load_round_trip_is_exact(built, run_dir, aux, predictor):
    index, stats = built
    fresh = build_atom_index(aux, predictor.sae, top_p=TOP_P, device="cpu")
    for name in ("values", "image", "patch", "mask_fraction"):
        assert torch.equal(getattr(index, name), getattr(fresh, name)), name
    for name in ("fire_count", "act_sum", "masked_sum", "category_mass", "category_tokens"):
        assert torch.equal(getattr(index.counts, name), getattr(fresh.counts, name)), name
    assert index.counts.mask_total == fresh.counts.mask_total
    expected = atom_stats(fresh, aux.images)
    pd.testing.assert_frame_equal(stats[list(expected.columns)], expected, check_exact=True)
    assert (Path(run_dir) / "atoms" / "stats.csv").is_file() and (Path(run_dir) / "atoms" / "index.json").is_file()


@pytest.mark.slow
def test_summaries_are_built_with_the_index_and_rebuilt_when_missing(run_dir, built, tmp_path):
    index, stats = built
    summaries = load_summaries(Path(run_dir) / SUMMARIES)
    assert torch.equal(summaries.sets["aux"].hist.sum(1), index.counts.fire_count)
    assert set(summaries.sets) == {"aux", "target"}
    assert {"border_share", "position_share", "image_share", "pixel_std", "flags", "labels"} <= set(stats.columns)
    assert summaries.pixel_std is not None and summaries.meta["blank_floor"] is not None  # images were read
    assert "flag_rule" in stats.attrs
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / SUMMARIES).unlink()
    rebuilt = ensure_summaries(copy)  # an older run: built on first use
    assert (copy / SUMMARIES).is_file()
    assert torch.equal(rebuilt.sets["target"].top_image, summaries.sets["target"].top_image)
    assert torch.equal(rebuilt.coact_atoms, summaries.coact_atoms)
    # flags saved under an older rule (other thresholds, no border_band) are recomputed, the summaries kept
    old = load_stats(copy / "atoms" / "stats.json").drop(columns=["border_band", "flags"])
    old.attrs["flag_thresholds"] = {**old.attrs["flag_thresholds"], "border_band": None}
    save_stats(old, copy / "atoms" / "stats.json", copy / "atoms" / "stats.csv")
    before = (copy / SUMMARIES).stat().st_mtime_ns
    ensure_summaries(copy)
    refreshed = load_stats(copy / "atoms" / "stats.json")
    assert refreshed["flags"].tolist() == stats["flags"].tolist() and "border_band" in refreshed.columns
    assert (copy / SUMMARIES).stat().st_mtime_ns == before


@pytest.mark.slow
def test_missing_damaged_or_stale_atoms_raise_with_the_fix(run_dir, built, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("atoms"))
    with pytest.raises(SPGError, match="spg atoms --run") as err:
        load_atoms(copy)
    assert "no atom index" in str(err.value)
    shutil.copytree(Path(run_dir) / "atoms", copy / "atoms")
    index_file = copy / "atoms" / "index.safetensors"
    index_file.write_bytes(index_file.read_bytes()[:200])
    with pytest.raises(SPGError, match="spg atoms --run"):
        load_atoms(copy)
    shutil.copy(Path(run_dir) / "atoms" / "index.safetensors", index_file)
    load_atoms(copy)  # whole again: loads
    sae_file = copy / "sae.safetensors"
    sae_file.write_bytes(sae_file.read_bytes() + b" ")  # another SAE file
    with pytest.raises(SPGError, match="another SAE"):
        load_atoms(copy)


@pytest.mark.slow
def test_cli_builds_index_and_gallery(run_dir, built, capsys):
    assert (
        spg_main(["atoms", "--run", str(run_dir), "--gallery", "2", "--per-atom", "3", "--quiet", "--device", "cpu"])
        == 0
    )
    out = capsys.readouterr().out
    assert "anomaly guide:" in out and "gallery:" in out

    with Image.open(Path(run_dir) / "atoms" / "gallery.png") as im:
        width, height = im.size
    assert width > 3 * 96 and height > 2 * 2 * 96  # 2 atom bands of crop + heatmap tiles
    assert spg_main(["atoms", "--run", str(Path(run_dir) / "nope")]) == 2
