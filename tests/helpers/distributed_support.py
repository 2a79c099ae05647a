"""Helpers for tests/test_distributed.py: spawn a gloo world on CPU, a tiny backbone, tiny data.

Worker functions live here (not in the test module) so that `torch.multiprocessing`'s
spawned children can import them; each writes its results as safetensors / JSON files.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp
from PIL import Image
from torch import nn

from spg_core import distributed
from spg_core.atomic import save_tensors
from spg_core.atoms.index import build_atom_index, save_index
from spg_core.backbones.base import Backbone
from spg_core.config import SAEConfig
from spg_core.data import Dataset, Sample
from spg_core.launch import free_port
from spg_core.sae import TopKSAE
from spg_core.sae_sharded import LatentShardedSAE, train_latent_sharded
from spg_core.sae_train import train_sae
from spg_core.store import TokenStore, build_store


def _enter_world(rank: int, world: int, port: int) -> None:
    """What torchrun would set, then join the gloo group (one thread per rank on a 2-core box)."""
    os.environ.update({**distributed.torchrun_env(rank, world, port), distributed.TIMEOUT_ENV: "60"})
    torch.set_num_threads(1)
    distributed.init_from_env("gloo")


def _entry(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    _enter_world(rank, world, port)
    try:
        fn(*args)
    finally:
        distributed.destroy()


def run_world(fn: Callable[..., None], world: int, *args: Any, timeout: float = 240.0) -> None:
    """Run `fn(*args)` in `world` spawned processes joined in a gloo group; raise if any fails
    (the others are then terminated, as torchrun does) or if they outlive `timeout` seconds."""
    ctx = mp.start_processes(
        _entry, args=(world, free_port(), fn, args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"distributed test workers still running after {timeout} s")


# -- a tiny deterministic backbone and dataset ----------------------------------------------------


class PatchBackbone(Backbone):
    """A linear patch embedding (conv 8x8, stride 8) with seeded weights: 32 px -> 4x4 tokens of 16 dims."""

    name = "test-patch"
    image_size = 32
    patch_size = 8
    dim = 16
    weights = "seed0"

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, self.dim, self.patch_size, self.patch_size)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=gen) * 0.1)
            self.proj.bias.copy_(torch.randn(self.dim, generator=gen) * 0.1)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.normalise(images)).flatten(2).transpose(1, 2)


def write_images(root: Path, n: int = 10, size: int = 40, seed: int = 0) -> Dataset:
    """`n` random RGB PNGs, every third one anomalous with a band mask; the Dataset over them."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        path = root / f"img_{i:03d}.png"
        Image.fromarray(img).save(path)
        mask_path = None
        if i % 3 == 2:
            mask = np.zeros((size, size), np.uint8)
            mask[5:15, 3:30] = 255
            mask_path = root / f"img_{i:03d}_mask.png"
            Image.fromarray(mask).save(mask_path)
        samples.append(
            Sample(
                str(path),
                str(mask_path) if mask_path else None,
                int(mask_path is not None),
                "cat" if i % 2 else "dog",
                "band" if mask_path else "good",
                "test",
            )
        )
    return Dataset(name="tiny-random", root=str(root), samples=samples)


# -- workers (run in every rank) ----------------------------------------------------------------------


def extract_worker(images: str, cache: str, shard_images: int, crash_rank: int = -1) -> None:
    """Every rank: build the store of `images`; rank `crash_rank` dies after its first shard."""
    dataset = write_images(Path(images))
    bb = PatchBackbone()
    if distributed.rank() == crash_rank:
        real, calls = bb.extract_with_cls, {"n": 0}  # what extraction calls (tokens, CLS)

        def dying(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
            calls["n"] += 1
            if calls["n"] > 1:
                (Path(cache) / f"crashed_rank_{crash_rank}").touch()
                raise RuntimeError("simulated crash of one rank")
            return real(x)

        bb.extract_with_cls = dying  # type: ignore[method-assign]
    build_store(
        dataset, bb, cache_dir=cache, shard_images=shard_images, batch_size=shard_images, num_workers=0, progress=False
    )


def train_worker(out: str, cfg_json: str, n_tokens: int, dim: int) -> None:
    """Every rank: data-parallel train_sae on the same random tokens; rank 0 writes the SAE."""
    cfg = SAEConfig(**json.loads(cfg_json))
    sae, history = train_sae(
        random_tokens(n_tokens, dim), cfg, tokens_per_image=16, device=torch.device("cpu"), progress=False
    )
    if distributed.is_main():
        sae.save(out, {"history": history})


def random_tokens(n: int, dim: int, seed: int = 1) -> torch.Tensor:
    """`[n, dim]` tokens with a few strong directions, so the SAE has structure to find."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, dim, generator=gen)
    mix = torch.randn(n, 8, generator=gen).relu()
    return (mix @ basis + 0.1 * torch.randn(n, dim, generator=gen)).to(torch.float16)


def index_worker(store_root: str, sae_path: str, out: str, chunk_tokens: int) -> None:
    """Every rank: its shards' top-P lists, merged; rank 0 writes the index."""
    sae, _ = TopKSAE.load(sae_path)
    index = build_atom_index(TokenStore(store_root), sae, top_p=4, device="cpu", chunk_tokens=chunk_tokens)
    if distributed.is_main():
        save_index(index, out)


def sharded_worker(sae_path: str, out: str, cfg_json: str, n_tokens: int) -> None:
    """Every rank: the SAE's atoms split over the ranks; its codes and reconstruction of the tokens,
    and a latent-sharded training run; rank 0 writes them."""
    full, _ = TopKSAE.load(sae_path)
    tokens = random_tokens(n_tokens, full.dim)
    with torch.no_grad():
        recon, code = LatentShardedSAE.from_full(full)(tokens.float())
    trained, history = train_latent_sharded(
        tokens, SAEConfig(**json.loads(cfg_json)), tokens_per_image=16, device=torch.device("cpu")
    )
    if distributed.is_main():
        save_tensors(
            out,
            {
                "recon": recon,
                "dense": code.dense(full.width),
                **{f"trained.{k}": v for k, v in trained.state_dict().items()},
            },
            {"history": history},
        )
