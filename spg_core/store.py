"""TokenStore: frozen-backbone patch tokens on disk, extracted once and shared by many runs.

One store per (dataset, split, backbone identity, resolution, layer). Layout:

    STORE/manifest.json              identity, grid, dtype, per-image records, shard list
    STORE/shard_00000.safetensors    tokens [n, N, D] fp16 + masks [n, ceil(S*S/8)] uint8 (bit-packed, S x S)
                                     + cls [n, D] fp16 when the backbone has a CLS token (version 2)
    STORE/skipped.json               images skipped with --skip-bad, and why

Shards are written atomically as they complete, and the manifest lists only
finished shards, so an interrupted extraction resumes where it stopped. Shards
are memory-mapped (safetensors is a JSON header followed by raw arrays), so a
store larger than RAM is still usable.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .atomic import read_json, save_tensors, write_json
from .backbones.base import Backbone
from .data import Dataset, Sample
from .errors import SPGError
from .images import image_to_uint8, load_image, load_mask, mask_to_tensor
from .paths import cache_root

STORE_VERSION = 2   # 2: optional `cls` tensor per shard; v1 stores are rebuilt (with a note)
DEFAULT_SHARD_IMAGES = 256


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "data"


def _records(samples: list[Sample]) -> list[dict[str, Any]]:
    return [asdict(s) for s in samples]


def store_key(dataset: Dataset, backbone: Backbone) -> dict[str, Any]:
    """Everything that must match for stored tokens to be re-usable."""
    return {
        "version": STORE_VERSION,
        "dataset": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "identity": backbone.identity(),
        "dtype": "float16",
        "images_sha": hashlib.sha256(json.dumps(_records(dataset.samples)).encode()).hexdigest(),
    }


def store_dir_for(dataset: Dataset, backbone: Backbone, cache_dir: str | Path | None = None) -> Path:
    key = store_key(dataset, backbone)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    ident = backbone.identity()
    name = f"{_slug(dataset.name)}__{_slug(ident['backbone'])}__{ident['image_size']}__L{ident['layer']}__{digest}"
    return cache_root(cache_dir) / "tokens" / name


def _memmap_tensor(path: Path, name: str) -> np.ndarray:
    """Memory-map one tensor of a safetensors file as a read-only numpy array."""
    dtypes = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I64": np.int64}
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
        info = header[name]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = dtypes[info["dtype"]]
        if path.stat().st_size < 8 + header_len + end:
            raise ValueError("file shorter than its header says")
        return np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=shape)
    except (OSError, KeyError, ValueError, struct.error, json.JSONDecodeError) as exc:
        raise SPGError(f"token shard is truncated or damaged ({exc})", path=str(path),
                       fix="delete the token store folder; it is rebuilt on the next run") from None


class TokenStore:
    """Read access to a finished store: tokens `[n_img, N, D]` fp16 and masks `[n_img, S, S]`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = read_json(self.root / "manifest.json", what="token store manifest")
        if not self.manifest.get("complete"):
            raise SPGError("token store is incomplete (extraction was interrupted)", path=str(self.root),
                           fix="re-run the same `spg extract` / `spg run` command to resume it")
        self._tokens = [_memmap_tensor(self.root / s["file"], "tokens") for s in self.manifest["shards"]]
        self._masks = [_memmap_tensor(self.root / s["file"], "masks") for s in self.manifest["shards"]]
        self._cls = ([_memmap_tensor(self.root / s["file"], "cls") for s in self.manifest["shards"]]
                     if self.manifest.get("cls") else None)
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


# -- building -------------------------------------------------------------------------------

def _pack_masks(masks: torch.Tensor) -> np.ndarray:
    """`[B, S, S]` {0,1} -> `[B, ceil(S*S/8)]` uint8."""
    flat = masks.reshape(masks.shape[0], -1).bool().numpy()
    return np.packbits(flat, axis=1)


class _CheckedImages(torch.utils.data.Dataset):
    """Decodes samples in DataLoader workers: uint8 image `[3, S, S]`, bit-packed mask.

    A bad image is reported (`error`) instead of raised, so the main loop decides: stop
    with the file's name, or skip it with --skip-bad, without a separate decode pass.
    """

    def __init__(self, samples: list[Sample], size: int, mask_resize: str = "nearest"):
        self.samples, self.size, self.mask_resize = samples, size, mask_resize

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s, size = self.samples[i], self.size
        try:
            img = load_image(s.image_path)
            image = image_to_uint8(img, size)
            if s.mask_path is None:
                mask = torch.zeros(size, size)
            else:
                mask = mask_to_tensor(load_mask(s.mask_path, img.size, image_path=s.image_path), size,
                                      self.mask_resize)
            error = ""
        except SPGError as exc:
            image, mask, error = torch.zeros(3, size, size, dtype=torch.uint8), torch.zeros(size, size), str(exc)
        # Packed here, in the worker: the main process only moves bytes.
        return {"image": image, "mask": torch.from_numpy(_pack_masks(mask[None])[0]), "index": i, "error": error}


def build_store(dataset: Dataset, backbone: Backbone, *, cache_dir: str | Path | None = None,
                batch_size: int | None = None, num_workers: int | None = None,
                shard_images: int = DEFAULT_SHARD_IMAGES, skip_bad: bool = False,
                progress: bool = True) -> TokenStore:
    """Extract tokens for `dataset` with `backbone`, re-using or resuming a matching store."""
    if len(dataset.samples) == 0:
        raise SPGError(f"dataset {dataset.name} has no images", path=dataset.root,
                       fix="check the dataset path and layout (see `spg run --help`)")
    root = store_dir_for(dataset, backbone, cache_dir)
    key = store_key(dataset, backbone)
    manifest_path = root / "manifest.json"

    manifest: dict[str, Any] | None = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            manifest = None
        if manifest is None or manifest.get("key") != key:
            old = (manifest or {}).get("key", {}).get("version")
            if old is not None and old != STORE_VERSION:
                print(f"note: token store format changed (v{old} -> v{STORE_VERSION}: CLS tokens); "
                      f"re-extracting {root}", file=sys.stderr)
            shutil.rmtree(root)          # stale or damaged: rebuild from scratch
            manifest = None
        elif manifest.get("complete"):
            return TokenStore(root)

    if manifest is None:
        root.mkdir(parents=True, exist_ok=True)
        manifest = {"key": key, "complete": False, "shard_images": shard_images, "cls": backbone.has_cls,
                    "images": _records(dataset.samples), "skipped": [], "shards": []}
        write_json(manifest_path, manifest)

    _extract_missing_shards(root, manifest, backbone, batch_size=batch_size, num_workers=num_workers,
                            skip_bad=skip_bad, progress=progress)
    if not manifest["images"]:
        raise SPGError(f"every image of {dataset.name} failed to load", path=str(root / "skipped.json"),
                       fix="see the skipped-image report for the reasons")
    manifest["complete"] = True
    write_json(manifest_path, manifest)
    return TokenStore(root)


def _extract_missing_shards(root: Path, manifest: dict[str, Any], backbone: Backbone, *,
                            batch_size: int | None, num_workers: int | None, skip_bad: bool,
                            progress: bool) -> None:
    """Extract every image no finished shard holds yet, in one pass.

    One DataLoader feeds the whole pass (workers decode in parallel, pinned memory on
    CUDA), tokens gather in a shard buffer, and full shards are written by a background
    thread so the accelerator never waits for the disk. A bad image stops the pass with
    its file name, or with --skip-bad is dropped from the manifest and reported.
    """
    device = next(iter(backbone.buffers()), next(iter(backbone.parameters()), torch.empty(0))).device
    on_cuda = device.type == "cuda"
    batch_size = batch_size or (64 if on_cuda else 8)
    workers = num_workers if num_workers is not None else min(16 if on_cuda else 2, os.cpu_count() or 1)
    per_shard = manifest["shard_images"]
    start = sum(s["count"] for s in manifest["shards"])
    todo = manifest["images"][start:]
    loader = torch.utils.data.DataLoader(
        _CheckedImages([Sample(**r) for r in todo], backbone.image_size, backbone.mask_resize),
        batch_size=batch_size, num_workers=workers, pin_memory=on_cuda,
        prefetch_factor=4 if workers else None)
    bar = tqdm(total=len(todo), desc=f"extract {backbone.name}", unit="img", disable=not progress)
    buffer = _ShardBuffer(backbone, per_shard, on_cuda)
    seen = 0
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for batch in loader:
            keep = []
            for pos, err in zip(batch["index"].tolist(), batch["error"]):
                if not err:
                    keep.append(pos)
                elif skip_bad:
                    manifest["skipped"].append({"image_path": todo[pos]["image_path"], "error": err})
                else:
                    raise SPGError(f"{err}\n  (or pass --skip-bad to skip bad images and write a report)")
            images, masks = batch["image"], batch["mask"]
            if len(keep) < len(batch["error"]):      # index only when something was dropped
                rows = [i for i, e in enumerate(batch["error"]) if not e]
                images, masks = images[rows], masks[rows]
            if keep:
                images = images.to(device, non_blocking=True).float().div_(255.0)
                tokens, cls = backbone.extract_with_cls(images)
                buffer.add(tokens, masks.numpy(), [todo[p] for p in keep], cls)
            seen += len(batch["error"])
            bar.update(len(batch["error"]))
            while buffer.full() or (buffer.count and seen == len(todo)):
                if pending is not None:
                    pending.result()        # its buffer is the one `take` hands out next
                pending = writer.submit(_write_shard, root, manifest, buffer.take())
        if pending is not None:
            pending.result()
    bar.close()
    if manifest["skipped"]:
        write_json(root / "skipped.json", manifest["skipped"])


class _ShardBuffer:
    """Accumulates extracted tokens (fp16; pinned host memory on CUDA) until a shard is full.

    Two buffers alternate: one is written to disk while the other fills, so a finished
    shard is handed to the writer without a copy. The caller waits for the previous
    write before `take`, which makes the other buffer current again.
    """

    def __init__(self, backbone: Backbone, per_shard: int, pinned: bool):
        h, w = backbone.grid
        self.buffers = [torch.empty(per_shard, h * w, backbone.dim, dtype=torch.float16, pin_memory=pinned)
                        for _ in range(2)]
        self.cls_buffers = ([torch.empty(per_shard, backbone.dim, dtype=torch.float16, pin_memory=pinned)
                             for _ in range(2)] if backbone.has_cls else None)
        self.current, self.pinned, self.per_shard = 0, pinned, per_shard
        self.masks: list[np.ndarray] = []
        self.records: list[dict[str, Any]] = []
        self.overflow: tuple[torch.Tensor, np.ndarray, list[dict[str, Any]], torch.Tensor | None] | None = None

    @property
    def count(self) -> int:
        return len(self.records)

    def full(self) -> bool:
        return self.count >= self.per_shard

    def add(self, tokens: torch.Tensor, masks: np.ndarray, records: list[dict[str, Any]],
            cls: torch.Tensor | None = None) -> None:
        """Append `[b, N, D]` tokens, packed masks and CLS `[b, D]`; what does not fit waits for the next shard."""
        n = min(self.per_shard - self.count, tokens.shape[0])
        self.buffers[self.current][self.count:self.count + n].copy_(tokens[:n], non_blocking=self.pinned)
        if self.cls_buffers is not None:
            self.cls_buffers[self.current][self.count:self.count + n].copy_(cls[:n], non_blocking=self.pinned)
        self.masks.append(masks[:n])
        self.records += records[:n]
        if n < tokens.shape[0]:
            self.overflow = (tokens[n:], masks[n:], records[n:], None if cls is None else cls[n:])

    def take(self) -> tuple[torch.Tensor, np.ndarray, list[dict[str, Any]], torch.Tensor | None]:
        """The finished shard (a view of the current buffer); the other buffer becomes current."""
        if self.pinned:
            torch.cuda.synchronize()        # the non-blocking copies into the buffer must be done
        cls = None if self.cls_buffers is None else self.cls_buffers[self.current][:self.count]
        shard = (self.buffers[self.current][:self.count], np.concatenate(self.masks), self.records, cls)
        self.current = 1 - self.current
        self.masks, self.records = [], []
        overflow, self.overflow = self.overflow, None
        if overflow is not None:
            self.add(*overflow)
        return shard


def _write_shard(root: Path, manifest: dict[str, Any],
                 shard: tuple[torch.Tensor, np.ndarray, list[dict[str, Any]], torch.Tensor | None]) -> None:
    """Write one shard atomically, then record it (and drop skipped images) in the manifest."""
    tokens, masks, records, cls = shard
    name = f"shard_{len(manifest['shards']):05d}.safetensors"
    tensors = {"tokens": tokens, "masks": torch.from_numpy(masks)}
    if cls is not None:
        tensors["cls"] = cls
    save_tensors(root / name, tensors)
    start = sum(s["count"] for s in manifest["shards"])
    skipped = {r["image_path"] for r in manifest["skipped"]}
    manifest["images"] = manifest["images"][:start] + [r for r in manifest["images"][start:]
                                                       if r["image_path"] not in skipped]
    manifest["shards"].append({"file": name, "start": start, "count": int(tokens.shape[0])})
    write_json(root / "manifest.json", manifest)   # a finished shard survives an interruption
