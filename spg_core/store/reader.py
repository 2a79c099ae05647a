"""TokenStore: read access to a finished token store (layout in layout.py, docs/STORE.md).

Shards are memory-mapped (safetensors is a JSON header followed by raw arrays), so a store
larger than RAM is still usable; tokens are read per image or streamed per shard.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import read_json
from ..errors import SPGError
from .layout import memmap_tensor


class TokenStore:
    """Read access to a finished store: tokens `[n_img, N, D]` fp16 and masks `[n_img, S, S]`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_json(self.root / "manifest.json", what="token store manifest")
        if not self.manifest.get("complete"):
            raise SPGError(
                "token store is incomplete (extraction was interrupted)",
                path=str(self.root),
                fix="re-run the same `spg extract` / `spg run` command to resume it",
            )
        self._tokens = [memmap_tensor(self.root / s["file"], "tokens") for s in self.manifest["shards"]]
        self._masks = [memmap_tensor(self.root / s["file"], "masks") for s in self.manifest["shards"]]
        self._cls = (
            [memmap_tensor(self.root / s["file"], "cls") for s in self.manifest["shards"]]
            if self.manifest.get("cls")
            else None
        )
        self._offsets = np.cumsum([0] + [s["count"] for s in self.manifest["shards"]])

    # -- description ------------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest["key"]["identity"]

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.identity["grid"])  # type: ignore[return-value]

    @property
    def image_size(self) -> int:
        return int(self.identity["image_size"])

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    @property
    def num_images(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def images(self) -> list[dict[str, Any]]:
        """Per-image records: image_path, mask_path, label, category, defect, split."""
        return self.manifest["images"]

    @property
    def categories(self) -> list[str]:
        return sorted({r["category"] for r in self.images})

    def __len__(self) -> int:
        return self.num_images

    # -- access -------------------------------------------------------------------------
    def _locate(self, index: int) -> tuple[int, int]:
        shard = int(np.searchsorted(self._offsets, index, side="right") - 1)
        return shard, index - int(self._offsets[shard])

    def tokens(self, indices: list[int] | np.ndarray) -> torch.Tensor:
        """Tokens of the given images as float32 `[B, N, D]`."""
        out = np.empty((len(indices), self.num_patches, self.dim), dtype=np.float32)
        for row, i in enumerate(indices):
            shard, local = self._locate(int(i))
            out[row] = self._tokens[shard][local]
        return torch.from_numpy(out)

    def masks(self, indices: list[int] | np.ndarray) -> torch.Tensor:
        """Ground-truth masks of the given images as float32 `[B, S, S]` in {0, 1}."""
        s = self.image_size
        out = np.empty((len(indices), s, s), dtype=np.float32)
        for row, i in enumerate(indices):
            shard, local = self._locate(int(i))
            out[row] = np.unpackbits(self._masks[shard][local], count=s * s).reshape(s, s)
        return torch.from_numpy(out)

    @property
    def has_cls(self) -> bool:
        return self._cls is not None

    def cls(self, indices: list[int] | np.ndarray) -> torch.Tensor | None:
        """CLS tokens of the given images as float32 `[B, D]`; None when the store has none."""
        if self._cls is None:
            return None
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        for row, i in enumerate(indices):
            shard, local = self._locate(int(i))
            out[row] = self._cls[shard][local]
        return torch.from_numpy(out)

    def labels(self) -> np.ndarray:
        return np.array([r["label"] for r in self.images], dtype=np.int64)

    def iter_shards(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first image index, fp16 tokens `[n, N, D]` memmap) per shard: the streaming path."""
        for start, toks in zip(self._offsets[:-1], self._tokens):
            yield int(start), toks

    def all_tokens(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16) -> torch.Tensor:
        """Every token as one `[n_img * N, D]` tensor on `device` (caller checks it fits)."""
        parts = [torch.from_numpy(np.array(t)).to(device=device, dtype=dtype) for _, t in self.iter_shards()]
        return torch.cat(parts).reshape(-1, self.dim)

    def all_cls(self, dtype: torch.dtype = torch.float16) -> torch.Tensor | None:
        """Every image's CLS token `[n_img, D]` (CPU), None when the store has none."""
        if self._cls is None:
            return None
        return torch.cat([torch.from_numpy(np.array(c)).to(dtype) for c in self._cls])
