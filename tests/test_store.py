"""TokenStore: exact fp16 tokens, masks, re-use, rebuild, resume, skip-bad, damaged shards."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from spg_core.backbones import load_backbone
from spg_core.data import open_dataset
from spg_core.errors import SPGError
from spg_core.images import image_to_tensor, load_image
from spg_core.store import TokenStore, build_store, store_dir_for


def _write_folder(root, n_good=3, n_bad=3, size=64, seed=0):
    """A folder dataset: good/ and scratch/ images, masks under masks/scratch/."""
    rng = np.random.default_rng(seed)
    (root / "good").mkdir(parents=True)
    (root / "scratch").mkdir()
    (root / "masks" / "scratch").mkdir(parents=True)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "good" / f"{i:03d}.png")
    for i in range(n_bad):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        img[10:20, 5:40] = 0
        Image.fromarray(img).save(root / "scratch" / f"{i:03d}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[10:20, 5:40] = 255
        Image.fromarray(mask).save(root / "masks" / "scratch" / f"{i:03d}_mask.png")
    return root


@pytest.fixture()
def folder(tmp_path):
    return _write_folder(tmp_path / "parts")


@pytest.mark.slow
def test_tokens_and_masks_match_direct_extraction(folder, tmp_path):
    ds = open_dataset(f"folder:{folder}")
    bb = load_backbone("builtin", device="cpu")
    store = build_store(ds, bb, cache_dir=tmp_path / "c", shard_images=4, progress=False, num_workers=0)
    assert store.num_images == 6 and len(store.manifest["shards"]) == 2
    assert store.grid == bb.grid and store.dim == bb.dim
    idx = [1, 4]
    direct = (
        bb.extract(
            torch.stack(
                [image_to_tensor(load_image(store.images[i]["image_path"]), bb.image_size, bb.pixels) for i in idx]
            )
        )
        .to(torch.float16)
        .float()
    )
    assert torch.equal(store.tokens(idx), direct)
    masks = store.masks(range(6))
    labels = store.labels()
    assert (masks.flatten(1).amax(1) == torch.tensor(labels, dtype=torch.float32)).all()
    # the mask's band is where the image had it: rows 10-20 of 64 -> 40-80 of 256
    bad = int(np.flatnonzero(labels)[0])
    assert masks[bad, 60, 100] == 1 and masks[bad, 150, 100] == 0
    assert store.manifest["key"]["identity"]["backbone"] == "builtin"


@pytest.mark.slow
def test_reuse_rebuild_and_resume(folder, tmp_path):
    ds = open_dataset(f"folder:{folder}")
    bb = load_backbone("builtin", device="cpu")
    cache = tmp_path / "c"
    store = build_store(ds, bb, cache_dir=cache, shard_images=2, progress=False, num_workers=0)
    shard0 = store.root / "shard_00000.safetensors"
    stamp = shard0.stat().st_mtime_ns
    again = build_store(ds, bb, cache_dir=cache, shard_images=2, progress=False, num_workers=0)
    assert again.root == store.root and shard0.stat().st_mtime_ns == stamp  # re-used, not re-extracted

    # A different backbone gets its own store.
    other = load_backbone("dinov2-large-tiny", device="cpu")
    assert store_dir_for(ds, other, cache) != store.root

    # Interrupt after the first shard: the finished shard survives and is not redone.
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["complete"] = False
    manifest["shards"] = manifest["shards"][:1]
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    (store.root / "shard_00001.safetensors").unlink()
    with pytest.raises(SPGError, match="incomplete"):
        TokenStore(store.root)
    resumed = build_store(ds, bb, cache_dir=cache, shard_images=2, progress=False, num_workers=0)
    assert shard0.stat().st_mtime_ns == stamp
    assert resumed.num_images == 6
    assert torch.equal(resumed.tokens(range(6)), store.tokens(range(6)))

    # A manifest whose key no longer matches (e.g. an older store version) is rebuilt.
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["key"]["version"] = -1
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    rebuilt = build_store(ds, bb, cache_dir=cache, shard_images=2, progress=False, num_workers=0)
    assert shard0.stat().st_mtime_ns != stamp
    assert rebuilt.manifest["key"]["version"] != -1


@pytest.mark.slow
def test_interrupted_extraction_leaves_no_partial_shard(folder, tmp_path):
    ds = open_dataset(f"folder:{folder}")
    bb = load_backbone("builtin", device="cpu")
    calls = {"n": 0}
    real = bb.extract_with_cls

    def flaky(images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(images)

    bb.extract_with_cls = flaky
    with pytest.raises(KeyboardInterrupt):
        build_store(ds, bb, cache_dir=tmp_path / "c", shard_images=2, batch_size=2, progress=False, num_workers=0)
    root = store_dir_for(ds, bb, tmp_path / "c")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("manifest")) == ["shard_00000.safetensors"]
    assert not list(root.glob("*.tmp")) and not list(root.glob(".*.tmp"))
    bb.extract_with_cls = real
    assert build_store(ds, bb, cache_dir=tmp_path / "c", shard_images=2, progress=False, num_workers=0).num_images == 6


def test_corrupt_image_error_and_skip_bad(folder, tmp_path):
    bad = folder / "good" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    ds = open_dataset(f"folder:{folder}")
    bb = load_backbone("builtin", device="cpu")
    with pytest.raises(SPGError, match="skip-bad") as exc:
        build_store(ds, bb, cache_dir=tmp_path / "c", progress=False, num_workers=0)
    assert str(bad) in str(exc.value)
    store = build_store(ds, bb, cache_dir=tmp_path / "c", skip_bad=True, progress=False, num_workers=0)
    assert store.num_images == 5
    report = json.loads((store.root / "skipped.json").read_text())
    assert [r["image_path"] for r in report] == [str(bad)]


def test_mask_size_mismatch_names_both_files(folder, tmp_path):
    mask = folder / "masks" / "scratch" / "000_mask.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    ds = open_dataset(f"folder:{folder}")
    with pytest.raises(SPGError) as exc:
        build_store(ds, load_backbone("builtin", device="cpu"), cache_dir=tmp_path / "c", progress=False, num_workers=0)
    assert str(mask) in str(exc.value)


@pytest.mark.slow
def test_truncated_shard_is_a_clear_error(folder, tmp_path):
    ds = open_dataset(f"folder:{folder}")
    store = build_store(
        ds, load_backbone("builtin", device="cpu"), cache_dir=tmp_path / "c", progress=False, num_workers=0
    )
    shard = store.root / "shard_00000.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    with pytest.raises(SPGError, match="truncated") as exc:
        TokenStore(store.root)
    assert str(shard) in str(exc.value)
