"""A complete token store of random tokens, written directly in the store format (docs/STORE.md).

For benchmarks and tests of training at a scale no extraction on this machine could make: the
tokens are N(0, 1) in the store's dtype, every image is a good one (empty mask), and the store is
written shard by shard (each atomically), so writing one never holds more than a shard.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import save_tensors, write_json
from .layout import STORE_VERSION, shard_name, shard_plan


def write_random_store(
    root: Path,
    *,
    images: int,
    grid: tuple[int, int],
    dim: int,
    shard_images: int = 64,
    image_size: int = 16,
    seed: int = 0,
) -> Path:
    """Write a complete fp16 store of `images` x `grid` tokens of `dim` values under `root`; return `root`."""
    root.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "image_path": f"random/{i:07d}.png",
            "mask_path": None,
            "label": 0,
            "category": "random",
            "defect": "good",
            "split": "test",
        }
        for i in range(images)
    ]
    rng = np.random.default_rng(seed)
    n_tok = grid[0] * grid[1]
    mask_bytes = -(-image_size * image_size // 8)
    shards = []
    for index, positions in enumerate(shard_plan(images, shard_images)):
        n = len(positions)
        tokens = rng.standard_normal((n, n_tok, dim), dtype=np.float32).astype(np.float16)
        info = {"index": index, "begin": positions.start, "end": positions.stop, "skipped": [], "rank": 0}
        save_tensors(
            root / shard_name(index),
            {"tokens": torch.from_numpy(tokens), "masks": torch.zeros(n, mask_bytes, dtype=torch.uint8)},
            {"shard": {**info, "world_size": 1}},
        )
        shards.append({"file": shard_name(index), "start": positions.start, "count": n})
    write_json(root / "manifest.json", _manifest(root, records, shards, grid, dim, image_size, shard_images))
    return root


def _manifest(
    root: Path,
    records: list[dict[str, Any]],
    shards: list[dict[str, Any]],
    grid: tuple[int, int],
    dim: int,
    image_size: int,
    shard_images: int,
) -> dict[str, Any]:
    identity = {
        "backbone": "random",
        "weights": None,
        "image_size": image_size,
        "patch_size": image_size // grid[0],
        "grid": list(grid),
        "dim": dim,
        "layer": 0,
    }
    key = {
        "version": STORE_VERSION,
        "dataset": "random",
        "root": str(root.resolve()),
        "identity": identity,
        "dtype": "float16",
        "images_sha": hashlib.sha256(json.dumps(records).encode()).hexdigest(),
    }
    return {
        "key": key,
        "complete": True,
        "shard_images": shard_images,
        "cls": False,
        "images": records,
        "skipped": [],
        "shards": shards,
        "world_size": 1,
    }
