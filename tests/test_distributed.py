"""torch.distributed on CPU (gloo, 2 spawned processes): extraction, SAE training, atom index, sharded top-k.

Each test compares a 2-rank result with the single-process one on the same data. Workers are in
tests/helpers/distributed_support.py; every spawned world is bounded by a timeout.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from helpers.distributed_support import (
    PatchBackbone,
    extract_worker,
    index_worker,
    random_tokens,
    run_world,
    sharded_worker,
    train_worker,
    write_images,
)
from safetensors import safe_open
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from spg_core import distributed
from spg_core.atomic import load_tensors
from spg_core.atoms.index import (
    build_atom_index,
    finish_index,
    load_index,
    merge_partials,
    store_chunks,
    stream_top_p,
)
from spg_core.cli import main
from spg_core.config import SAEConfig
from spg_core.sae import TopKSAE
from spg_core.sae_train import train_sae
from spg_core.store import TokenStore, build_store, store_dir_for


def test_batch_slices_cover_the_batch_once():
    for rows in (0, 1, 5, 12):
        for size in (1, 2, 3, 5):
            parts = [range(rows)[distributed.batch_slice(rows, distributed.World(r, size))] for r in range(size)]
            assert [i for p in parts for i in p] == list(range(rows))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert distributed.owned(7, distributed.World(1, 3)) == [1, 4]
    assert distributed.world_size() == 1 and distributed.all_reduce(torch.ones(2)).tolist() == [1.0, 1.0]


@pytest.fixture()
def single_store(tmp_path):
    """The 1-process store of the tiny random dataset (10 images, shards of 2)."""
    dataset = write_images(tmp_path / "images")
    return build_store(
        dataset,
        PatchBackbone(),
        cache_dir=tmp_path / "one",
        shard_images=2,
        batch_size=2,
        num_workers=0,
        progress=False,
    )


def test_two_rank_extraction_equals_one_rank(tmp_path, single_store):
    run_world(extract_worker, 2, str(tmp_path / "images"), str(tmp_path / "two"), 2)
    two = TokenStore(store_dir_for(write_images(tmp_path / "images"), PatchBackbone(), tmp_path / "two"))
    assert two.manifest["world_size"] == 2 and single_store.manifest["world_size"] == 1
    assert two.images == single_store.images
    assert [s["count"] for s in two.manifest["shards"]] == [2] * 5
    assert torch.equal(two.tokens(range(10)), single_store.tokens(range(10)))
    assert torch.equal(two.masks(range(10)), single_store.masks(range(10)))
    # rank r wrote shards r, r+2, ...: each shard records its writer
    ranks = [_shard_meta(two.root / s["file"])["rank"] for s in two.manifest["shards"]]
    assert ranks == [0, 1, 0, 1, 0]


def _shard_meta(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["shard"])


@pytest.mark.slow  # two spawned worlds: 19-67 s on the shared 2-core VM
def test_crash_of_one_rank_then_rerun_completes(tmp_path, single_store):
    images, cache = str(tmp_path / "images"), str(tmp_path / "two")
    # Whichever rank's failure is reported first: rank 1's crash, or rank 0's broken barrier.
    with pytest.raises((ProcessRaisedException, ProcessExitedException)):
        run_world(extract_worker, 2, images, cache, 2, 1)
    assert (tmp_path / "two" / "crashed_rank_1").is_file()
    root = store_dir_for(write_images(tmp_path / "images"), PatchBackbone(), tmp_path / "two")
    manifest = json.loads((root / "manifest.json").read_text())
    assert not manifest["complete"]
    on_disk = sorted(p.name for p in root.glob("shard_*.safetensors"))
    # rank 1 died after its first shard (1) and before its second (3); rank 0 may have been
    # stopped anywhere, so only what rank 1 left is certain
    assert "shard_00001.safetensors" in on_disk and "shard_00003.safetensors" not in on_disk
    stamps = {n: (root / n).stat().st_mtime_ns for n in on_disk}
    run_world(extract_worker, 2, images, cache, 2)
    store = TokenStore(root)
    assert {n: (root / n).stat().st_mtime_ns for n in on_disk} == stamps  # finished shards not redone
    assert torch.equal(store.tokens(range(10)), single_store.tokens(range(10)))
    assert store.images == single_store.images
    assert not list(root.glob(".*.tmp"))  # a killed rank's temp file is cleared on resume


def _index_fixture(store, seed=3):
    """A random SAE over the store's token dimension (M 24, k 3)."""
    return TopKSAE(store.dim, 24, 3, seed=seed)


def test_merge_of_shard_partials_equals_the_single_pass(single_store):
    store, sae = single_store, _index_fixture(single_store)
    chunk = 3 * store.num_patches  # 3 images: shards of 2 are cut the same either way
    whole = build_atom_index(store, sae, top_p=4, device="cpu", chunk_tokens=chunk)
    parts = [
        stream_top_p(
            store_chunks(store, chunk, shards=distributed.owned(5, distributed.World(r, 2))),
            sae,
            top_p=4,
            num_patches=store.num_patches,
            num_categories=len(store.categories),
        )
        for r in (1, 0)
    ]  # merge order must not matter
    merged = finish_index(*merge_partials(parts), store.num_patches, {})
    assert whole.image.ge(0).sum() > 3 * 24  # most slots filled: the merge had work to do
    for name in ("values", "image", "patch", "mask_fraction"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    assert torch.equal(merged.counts.fire_count, whole.counts.fire_count)
    assert torch.allclose(merged.counts.category_mass, whole.counts.category_mass, rtol=1e-12)
    assert merged.counts.num_tokens == whole.counts.num_tokens == 10 * store.num_patches


def test_two_rank_atom_index_equals_single_process(tmp_path, single_store):
    store, sae = single_store, _index_fixture(single_store)
    sae.save(str(tmp_path / "sae.safetensors"))
    chunk = 3 * store.num_patches
    run_world(
        index_worker, 2, str(store.root), str(tmp_path / "sae.safetensors"), str(tmp_path / "idx.safetensors"), chunk
    )
    two = load_index(tmp_path / "idx.safetensors")
    one = build_atom_index(store, sae, top_p=4, device="cpu", chunk_tokens=chunk)
    assert two.meta["world_size"] == 2
    assert torch.equal(two.image, one.image) and torch.equal(two.patch, one.patch)
    # 1-thread ranks vs this process's threads: the same matmuls, possibly summed in another order
    assert torch.allclose(two.values, one.values, rtol=1e-6, atol=1e-6)
    assert torch.equal(two.counts.fire_count, one.counts.fire_count)
    assert torch.allclose(two.counts.act_sum, one.counts.act_sum, rtol=1e-6)


@pytest.mark.slow  # 35-56 s on the shared 2-core VM (load average 15), most of it process start-up
def test_two_rank_data_parallel_training_equals_one_rank(tmp_path):
    # 4096 tokens, batch 16 images x 16 = 256 tokens: 16 steps x 2 epochs; the odd width and k make
    # the top-k do real selection. 1 process trains here, the 2-rank world in spawned processes.
    cfg = {"width": 48, "k": 6, "lr": 3e-3, "batch_images": 16, "epochs": 2, "seed": 5, "dead_after_tokens": 512}
    n_tokens, dim = 4096, 24
    one, history_one = train_sae(
        random_tokens(n_tokens, dim), SAEConfig(**cfg), tokens_per_image=16, device=torch.device("cpu"), progress=False
    )
    run_world(train_worker, 2, str(tmp_path / "two.safetensors"), json.dumps(cfg), n_tokens, dim)
    two, meta = TopKSAE.load(str(tmp_path / "two.safetensors"))
    start = TopKSAE(dim, cfg["width"], cfg["k"], seed=cfg["seed"])
    moved = (one.W_dec - start.W_dec).abs().max()
    assert moved > 1e-2  # training changed the atoms ...
    for name, p in one.state_dict().items():  # ... identically in both worlds
        # measured max |diff| 1.2e-7 (W_dec, b_dec; float summation order of the all-reduce, 1 vs 2 threads);
        # 1e-4 leaves room for a rare top-k near-tie flip, and is still 100x below `moved`
        assert torch.allclose(p, two.state_dict()[name], atol=1e-4), name
    history_two = meta["history"]
    for a, b in zip(history_one[:-1], history_two[:-1]):
        assert abs(a["loss"] - b["loss"]) <= 1e-5 * abs(a["loss"]) and a["dead_fraction"] == b["dead_fraction"]
    assert abs(history_one[-1]["fvu"] - history_two[-1]["fvu"]) < 1e-5


@pytest.mark.slow  # 39-40 s on the shared 2-core VM (load average 15)
def test_latent_sharded_topk_and_training_equal_the_unsharded_sae(tmp_path):
    # M 48 split 24 + 24, k 6: most tokens take atoms from both halves, so the global top-k is exercised
    cfg = {"width": 48, "k": 6, "lr": 3e-3, "batch_images": 16, "epochs": 2, "seed": 5, "dead_after_tokens": 512}
    n_tokens, dim = 2048, 24
    full = TopKSAE(dim, 48, 6, seed=11)
    tokens = random_tokens(n_tokens, dim)
    full.init_bias(tokens)
    full.save(str(tmp_path / "full.safetensors"))
    run_world(
        sharded_worker,
        2,
        str(tmp_path / "full.safetensors"),
        str(tmp_path / "out.safetensors"),
        json.dumps(cfg),
        n_tokens,
    )
    out, meta = load_tensors(tmp_path / "out.safetensors")
    with torch.no_grad():
        recon, code = full(tokens.float())
    dense = code.dense(48)
    owners = (dense > 0).float() @ torch.tensor([1.0] * 24 + [2.0] * 24) / (dense > 0).sum(1).clamp_min(1)
    assert ((owners > 1) & (owners < 2)).float().mean() > 0.5  # codes mix both ranks' atoms
    assert torch.equal(out["dense"] > 0, dense > 0)  # the same atoms chosen ...
    assert torch.allclose(out["dense"], dense, atol=1e-5)  # ... with the same values
    assert torch.allclose(out["recon"], recon, atol=1e-4)
    one, history = train_sae(tokens, SAEConfig(**cfg), tokens_per_image=16, device=torch.device("cpu"), progress=False)
    for name, p in one.state_dict().items():
        # measured max |diff| 1.2e-7 (b_dec); 1e-4 as in the data-parallel test
        assert torch.allclose(p, out[f"trained.{name}"], atol=1e-4), name
    assert abs(meta["history"][-1]["loss"] - history[-2]["loss"]) <= 1e-5 * history[-2]["loss"]
    assert meta["history"][-1]["dead_fraction"] == pytest.approx(history[-2]["dead_fraction"])


@pytest.mark.slow  # a torchrun launch and an in-process run: 45-58 s on the shared 2-core VM
def test_torchrun_train_sae_equals_single_process(tmp_path):
    images = tmp_path / "images"
    write_images(images / "good", n=8)
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",
        "SPG_CACHE": str(tmp_path / "cache2"),
        distributed.TIMEOUT_ENV: "60",
    }
    common = [
        "train-sae",
        "--aux",
        f"folder:{images}",
        "--backbone",
        "dinov2-large-tiny",
        "--device",
        "cpu",
        "--width",
        "16",
        "--k",
        "4",
        "--sae-epochs",
        "2",
        "--workers",
        "0",
        "--quiet",
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "spg_core.cli",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        cwd=repo,
        check=True,
        timeout=240,
        capture_output=True,
    )
    assert main([*common, "--out", str(tmp_path / "one"), "--cache-dir", str(tmp_path / "cache1")]) == 0
    one, _ = TopKSAE.load(str(tmp_path / "one" / "sae.safetensors"))
    two, _ = TopKSAE.load(str(tmp_path / "two" / "sae.safetensors"))
    assert json.loads((tmp_path / "two" / "sae.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "sae.json").read_text())["world_size"] == 1
    for name, p in one.state_dict().items():
        # measured max |diff| 1.5e-8 with `spg run` on a similar set; 1e-4 as in the data-parallel test
        assert torch.allclose(p, two.state_dict()[name], atol=1e-4), name


# -- a spawned world must not re-run a Streamlit page that an earlier test executed ------------------
# AppTest leaves its page script installed as __main__; spawned children re-import __main__. conftest's
# keep_main_module puts pytest's back after each test: these two tests, in this order, check that it does.
_RERUN_MARK = Path(tempfile.mkdtemp()) / "page_ran_in_a_child"


def test_an_apptest_page_runs_first():
    AppTest = pytest.importorskip("streamlit.testing.v1").AppTest
    AppTest.from_string(f"from pathlib import Path\nPath({str(_RERUN_MARK)!r}).touch()").run()
    assert _RERUN_MARK.exists()
    _RERUN_MARK.unlink()


def test_then_spawned_ranks_do_not_rerun_that_page(tmp_path):
    cfg = {"width": 48, "k": 6, "lr": 3e-3, "batch_images": 16, "epochs": 1, "seed": 5, "dead_after_tokens": 512}
    run_world(train_worker, 2, str(tmp_path / "two.safetensors"), json.dumps(cfg), 512, 24)
    assert (tmp_path / "two.safetensors").is_file()
    assert not _RERUN_MARK.exists(), "a spawned rank re-ran the Streamlit page of an earlier test"
