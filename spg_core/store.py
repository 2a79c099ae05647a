"""TokenStore: frozen-backbone patch tokens on disk, extracted once and shared by many runs.

One store per (dataset, split, backbone identity, resolution, layer). Layout (docs/STORE.md
is the normative description):

    STORE/manifest.json              identity, grid, dtype, per-image records, shard list
    STORE/shard_00000.safetensors    tokens [n, N, D] fp16 + masks [n, ceil(S*S/8)] uint8 (bit-packed, S x S);
                                     + cls [n, D] fp16 when the backbone has a CLS token (version 2);
                                     its metadata `shard` records the image positions it covers
    STORE/skipped.json               images skipped with --skip-bad, and why

Shard i covers a fixed run of the image list (`shard_plan`), so the shards do not depend on
how many processes extract them: under torchrun rank r writes shards i % world == r.
Each shard is written atomically and is complete when its file exists; the manifest says
`complete` only once every shard is, so an interrupted extraction (of any rank) resumes by
extracting the missing shards. Shards are memory-mapped (safetensors is a JSON header
followed by raw arrays), so a store larger than RAM is still usable.
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

from . import distributed
from .atomic import read_json, save_tensors, write_json
from .backbones.base import Backbone
from .data import Dataset, Sample
from .errors import SPGError
from .paths import cache_root
from .images import image_to_uint8, load_image, load_mask, mask_to_tensor

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
    """Extract tokens for `dataset` with `backbone`, re-using or resuming a matching store.

    Collective under torchrun: every rank calls it; rank r extracts the missing shards
    `i % world == r` (see `distributed.owned`), and rank 0 writes the final manifest once
    every shard is on disk. A single process is a world of one.
    """
    if len(dataset.samples) == 0:
        raise SPGError(f"dataset {dataset.name} has no images", path=dataset.root,
                       fix="check the dataset path and layout (see `spg run --help`)")
    root = store_dir_for(dataset, backbone, cache_dir)
    manifest_path = root / "manifest.json"
    if distributed.is_main():
        _prepare(root, store_key(dataset, backbone), _records(dataset.samples), shard_images, backbone.has_cls)
    distributed.barrier()                 # every rank now sees the same manifest
    manifest = read_json(manifest_path, what="token store manifest")
    if manifest.get("complete"):
        return TokenStore(root)

    plan = shard_plan(len(manifest["images"]), manifest["shard_images"])
    done = finished_shards(root, plan)
    mine = [i for i in distributed.owned(len(plan)) if i not in done]
    if mine:
        _extract_shards(root, manifest["images"], plan, mine, backbone, batch_size=batch_size,
                        num_workers=num_workers, skip_bad=skip_bad, progress=progress)
    distributed.barrier()                 # every shard of every rank is on disk
    final = _final_manifest(root, manifest, plan)
    if distributed.is_main() and final["skipped"]:
        write_json(root / "skipped.json", final["skipped"])
    if not final["images"]:
        raise SPGError(f"every image of {dataset.name} failed to load", path=str(root / "skipped.json"),
                       fix="see the skipped-image report for the reasons")
    if distributed.is_main():
        write_json(manifest_path, final)
    distributed.barrier()                 # nobody opens the store before the manifest says complete
    return TokenStore(root)


def _prepare(root: Path, key: dict[str, Any], records: list[dict[str, Any]], shard_images: int,
             has_cls: bool) -> None:
    """Rank 0: keep a matching store, delete a stale or damaged one, start a new one."""
    manifest_path = root / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError:
            manifest = None
        if manifest is not None and manifest.get("key") == key:
            # A killed writer (kill -9, a rank torn down by torchrun) leaves its temp file; no rank
            # writes yet, so whatever temp file is here is such a leftover.
            for leftover in root.glob(".shard_*.tmp"):
                leftover.unlink(missing_ok=True)
            return
        old = (manifest or {}).get("key", {}).get("version")
        if old is not None and old != STORE_VERSION:
            print(f"note: token store format changed (v{old} -> v{STORE_VERSION}: CLS tokens); "
                  f"re-extracting {root}", file=sys.stderr)
        shutil.rmtree(root)               # stale or damaged: rebuild from scratch
    root.mkdir(parents=True, exist_ok=True)
    write_json(manifest_path, {"key": key, "complete": False, "shard_images": shard_images, "cls": has_cls,
                               "images": records, "skipped": [], "shards": []})


def shard_plan(num_images: int, shard_images: int) -> list[range]:
    """Planned image positions of each shard: shard i holds positions [i*S, (i+1)*S) of the
    dataset's image list (fewer rows when images were skipped). Fixed by the manifest alone,
    so it is the same for any number of ranks and across resumes."""
    return [range(lo, min(lo + shard_images, num_images)) for lo in range(0, num_images, shard_images)]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _shard_info(path: Path) -> dict[str, Any] | None:
    """A shard file's own record (its safetensors metadata), or None when absent or unreadable."""
    try:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
        return json.loads(header["__metadata__"]["shard"])
    except (OSError, KeyError, ValueError, TypeError, struct.error):
        return None


def finished_shards(root: Path, plan: list[range]) -> dict[int, dict[str, Any]]:
    """Planned shards whose file is on disk and records the planned positions: {index: record}.

    A shard file is written whole or not at all (temp file + rename), so its presence is its
    completion; the record check rejects a shard left by another plan (another --shard size)."""
    done = {}
    for i, positions in enumerate(plan):
        info = _shard_info(root / shard_name(i))
        if info is not None and (info.get("begin"), info.get("end")) == (positions.start, positions.stop):
            done[i] = info
    return done


def _final_manifest(root: Path, manifest: dict[str, Any], plan: list[range]) -> dict[str, Any]:
    """The complete manifest, from the shard files alone: kept images in plan order, the
    skipped ones, and each non-empty shard's first row and row count."""
    done = finished_shards(root, plan)
    missing = [shard_name(i) for i in range(len(plan)) if i not in done]
    if missing:
        raise SPGError(f"{len(missing)} token shard(s) missing after extraction: {', '.join(missing[:3])}",
                       path=str(root), fix="re-run the same command to extract them")
    images, skipped, shards = [], [], []
    for i, positions in enumerate(plan):
        info = done[i]
        lost = {r["image_path"] for r in info["skipped"]}
        kept = [r for r in manifest["images"][positions.start:positions.stop] if r["image_path"] not in lost]
        skipped += info["skipped"]
        if kept:
            shards.append({"file": shard_name(i), "start": len(images), "count": len(kept)})
        images += kept
    return {**manifest, "complete": True, "images": images, "skipped": skipped, "shards": shards,
            "world_size": distributed.world_size()}


def _extract_shards(root: Path, records: list[dict[str, Any]], plan: list[range], todo_shards: list[int],
                    backbone: Backbone, *, batch_size: int | None, num_workers: int | None, skip_bad: bool,
                    progress: bool) -> None:
    """Extract the images of shards `todo_shards` (ascending) and write each shard file.

    One DataLoader feeds the whole pass (workers decode in parallel, pinned memory on
    CUDA), tokens gather in a shard buffer, and finished shards are written by a background
    thread so the accelerator never waits for the disk. A bad image stops the pass with
    its file name, or with --skip-bad is left out of its shard and recorded in it.
    """
    device = next(iter(backbone.buffers()), next(iter(backbone.parameters()), torch.empty(0))).device
    on_cuda = device.type == "cuda"
    batch_size = batch_size or (64 if on_cuda else 8)
    # Processes on one node share its cores.
    cores = max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    workers = num_workers if num_workers is not None else min(16 if on_cuda else 2, cores)
    positions = [p for i in todo_shards for p in plan[i]]
    shard_of = np.concatenate([np.full(len(plan[i]), i) for i in todo_shards])
    todo = [records[p] for p in positions]
    loader = torch.utils.data.DataLoader(
        _CheckedImages([Sample(**r) for r in todo], backbone.image_size, backbone.mask_resize),
        batch_size=batch_size, num_workers=workers, pin_memory=on_cuda,
        prefetch_factor=4 if workers else None)
    world = distributed.current()
    desc = f"extract {backbone.name}" + (f" [rank {world.rank}/{world.size}]" if world.size > 1 else "")
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    buffer = _ShardBuffer(backbone, plan[0].stop - plan[0].start, on_cuda)
    seen = {i: 0 for i in todo_shards}
    skipped: dict[int, list[dict[str, str]]] = {i: [] for i in todo_shards}
    current = 0
    buffer.start(todo_shards[0])
    with ThreadPoolExecutor(max_workers=1) as writer:
        pending = None
        for batch in loader:
            keep = []
            for pos, err in zip(batch["index"].tolist(), batch["error"]):
                seen[int(shard_of[pos])] += 1
                if not err:
                    keep.append(pos)
                elif skip_bad:
                    skipped[int(shard_of[pos])].append({"image_path": todo[pos]["image_path"], "error": err})
                else:
                    raise SPGError(f"{err}\n  (or pass --skip-bad to skip bad images and write a report)")
            images, masks = batch["image"], batch["mask"]
            if len(keep) < len(batch["error"]):      # index only when something was dropped
                rows = [i for i, e in enumerate(batch["error"]) if not e]
                images, masks = images[rows], masks[rows]
            if keep:
                images = images.to(device, non_blocking=True).float().div_(255.0)
                tokens, cls = backbone.extract_with_cls(images)
                buffer.add(tokens, masks.numpy(), shard_of[keep], cls)
            bar.update(len(batch["error"]))
            while current < len(todo_shards) and seen[todo_shards[current]] == len(plan[todo_shards[current]]):
                i = todo_shards[current]
                if pending is not None:
                    pending.result()        # its buffer is the one `take` hands out next
                info = {"index": i, "begin": plan[i].start, "end": plan[i].stop, "skipped": skipped[i],
                        "rank": world.rank, "world_size": world.size}
                pending = writer.submit(_write_shard, root / shard_name(i), buffer.take(), info)
                current += 1
                if current < len(todo_shards):
                    buffer.start(todo_shards[current])
        if pending is not None:
            pending.result()
    bar.close()


class _ShardBuffer:
    """Accumulates one shard's extracted tokens (fp16; pinned host memory on CUDA).

    Two buffers alternate: one is written to disk while the other fills, so a finished
    shard is handed to the writer without a copy. The caller waits for the previous
    write before `take`, which makes the other buffer current again. Rows of later shards
    (a batch may span shards) wait in `pending` until their shard is `start`ed.
    """

    def __init__(self, backbone: Backbone, per_shard: int, pinned: bool):
        h, w = backbone.grid
        self.buffers = [torch.empty(per_shard, h * w, backbone.dim, dtype=torch.float16, pin_memory=pinned)
                        for _ in range(2)]
        self.cls_buffers = ([torch.empty(per_shard, backbone.dim, dtype=torch.float16, pin_memory=pinned)
                             for _ in range(2)] if backbone.has_cls else None)
        self.current, self.pinned, self.count, self.shard = 0, pinned, 0, -1
        self.mask_bytes = (backbone.image_size ** 2 + 7) // 8
        self.masks: list[np.ndarray] = []
        self.pending: list[tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor | None]] = []

    def start(self, shard: int) -> None:
        """Fill the current buffer with shard `shard`'s rows, beginning with those already waiting."""
        self.shard = shard
        waiting, self.pending = self.pending, []
        for piece in waiting:
            self.add(*piece)

    def add(self, tokens: torch.Tensor, masks: np.ndarray, shard_ids: np.ndarray,
            cls: torch.Tensor | None = None) -> None:
        """Append `[b, N, D]` tokens, packed masks `[b, P]` and CLS `[b, D]` of shards `shard_ids` `[b]`
        (ascending)."""
        n = int((shard_ids == self.shard).sum())
        self.buffers[self.current][self.count:self.count + n].copy_(tokens[:n], non_blocking=self.pinned)
        if self.cls_buffers is not None:
            self.cls_buffers[self.current][self.count:self.count + n].copy_(cls[:n], non_blocking=self.pinned)
        self.masks.append(masks[:n])
        self.count += n
        if n < tokens.shape[0]:
            self.pending.append((tokens[n:], masks[n:], shard_ids[n:], None if cls is None else cls[n:]))

    def take(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """The finished shard (a view of the current buffer); the other buffer becomes current."""
        if self.pinned:
            torch.cuda.synchronize()        # the non-blocking copies into the buffer must be done
        masks = np.concatenate(self.masks) if self.masks else np.zeros((0, self.mask_bytes), np.uint8)
        cls = None if self.cls_buffers is None else self.cls_buffers[self.current][:self.count]
        shard = (self.buffers[self.current][:self.count], masks, cls)
        self.current, self.count, self.masks = 1 - self.current, 0, []
        return shard


def _write_shard(path: Path, shard: tuple[torch.Tensor, np.ndarray, torch.Tensor | None],
                 info: dict[str, Any]) -> None:
    """Write one shard atomically, its own record (`info`) in the safetensors metadata."""
    tokens, masks, cls = shard
    tensors = {"tokens": tokens, "masks": torch.from_numpy(masks)}
    if cls is not None:
        tensors["cls"] = cls
    save_tensors(path, tensors, {"shard": info})
