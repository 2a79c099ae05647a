"""build_store: extract a dataset's patch tokens into a token store, re-using or resuming one.

Shard i covers a fixed run of the image list (`shard_plan`), so the shards do not depend on
how many processes extract them: under torchrun rank r writes shards i % world == r.
Each shard is written atomically and is complete when its file exists; the manifest says
`complete` only once every shard is, so an interrupted extraction (of any rank) resumes by
extracting the missing shards. The format is docs/STORE.md; its shared rules are layout.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..atomic import read_json, save_tensors, write_json
from ..backbones.base import Backbone
from ..data import Dataset, Sample
from ..errors import SPGError
from ..images import image_to_uint8, load_image, load_mask, mask_to_tensor, shape_note
from .layout import (
    DEFAULT_SHARD_IMAGES,
    STORE_VERSION,
    finished_shards,
    image_records,
    pack_masks,
    shard_name,
    shard_plan,
    store_dir_for,
    store_key,
)
from .reader import TokenStore


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
                mask = mask_to_tensor(load_mask(s.mask_path, img.size, image_path=s.image_path), size, self.mask_resize)
            error, note = "", shape_note(img.size, size) or ""
        except SPGError as exc:
            image, mask, error = torch.zeros(3, size, size, dtype=torch.uint8), torch.zeros(size, size), str(exc)
            note = ""
        # Packed here, in the worker: the main process only moves bytes.
        mask = torch.from_numpy(pack_masks(mask[None])[0])
        return {"image": image, "mask": mask, "index": i, "error": error, "note": note}


def build_store(
    dataset: Dataset,
    backbone: Backbone,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    shard_images: int = DEFAULT_SHARD_IMAGES,
    skip_bad: bool = False,
    progress: bool = True,
) -> TokenStore:
    """Extract tokens for `dataset` with `backbone`, re-using or resuming a matching store.

    Collective under torchrun: every rank calls it; rank r extracts the missing shards
    `i % world == r` (see `distributed.owned`), and rank 0 writes the final manifest once
    every shard is on disk. A single process is a world of one.
    """
    if len(dataset.samples) == 0:
        raise SPGError(
            f"dataset {dataset.name} has no images",
            path=dataset.root,
            fix="check the dataset path and layout (see `spg run --help`)",
        )
    root = store_dir_for(dataset, backbone, cache_dir)
    manifest_path = root / "manifest.json"
    if distributed.is_main():
        _prepare(root, store_key(dataset, backbone), image_records(dataset.samples), shard_images, backbone.has_cls)
    distributed.barrier()  # every rank now sees the same manifest
    manifest = read_json(manifest_path, what="token store manifest")
    if manifest.get("complete"):
        return TokenStore(root)

    plan = shard_plan(len(manifest["images"]), manifest["shard_images"])
    done = finished_shards(root, plan)
    mine = [i for i in distributed.owned(len(plan)) if i not in done]
    if mine:
        _extract_shards(
            root,
            manifest["images"],
            plan,
            mine,
            backbone,
            batch_size=batch_size,
            num_workers=num_workers,
            skip_bad=skip_bad,
            progress=progress,
        )
    distributed.barrier()  # every shard of every rank is on disk
    final = _final_manifest(root, manifest, plan)
    if distributed.is_main() and final["skipped"]:
        write_json(root / "skipped.json", final["skipped"])
    if not final["images"]:
        raise SPGError(
            f"every image of {dataset.name} failed to load",
            path=str(root / "skipped.json"),
            fix="see the skipped-image report for the reasons",
        )
    if distributed.is_main():
        write_json(manifest_path, final)
    distributed.barrier()  # nobody opens the store before the manifest says complete
    return TokenStore(root)


def _prepare(root: Path, key: dict[str, Any], records: list[dict[str, Any]], shard_images: int, has_cls: bool) -> None:
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
            print(
                f"note: token store format changed (v{old} -> v{STORE_VERSION}: CLS tokens); re-extracting {root}",
                file=sys.stderr,
            )
        shutil.rmtree(root)  # stale or damaged: rebuild from scratch
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        manifest_path,
        {
            "key": key,
            "complete": False,
            "shard_images": shard_images,
            "cls": has_cls,
            "images": records,
            "skipped": [],
            "shards": [],
        },
    )


def _final_manifest(root: Path, manifest: dict[str, Any], plan: list[range]) -> dict[str, Any]:
    """The complete manifest, from the shard files alone: kept images in plan order, the
    skipped ones, and each non-empty shard's first row and row count."""
    done = finished_shards(root, plan)
    missing = [shard_name(i) for i in range(len(plan)) if i not in done]
    if missing:
        raise SPGError(
            f"{len(missing)} token shard(s) missing after extraction: {', '.join(missing[:3])}",
            path=str(root),
            fix="re-run the same command to extract them",
        )
    images, skipped, shards = [], [], []
    for i, positions in enumerate(plan):
        info = done[i]
        lost = {r["image_path"] for r in info["skipped"]}
        kept = [r for r in manifest["images"][positions.start : positions.stop] if r["image_path"] not in lost]
        skipped += info["skipped"]
        if kept:
            shards.append({"file": shard_name(i), "start": len(images), "count": len(kept)})
        images += kept
    return {
        **manifest,
        "complete": True,
        "images": images,
        "skipped": skipped,
        "shards": shards,
        "world_size": distributed.world_size(),
    }


def _extract_shards(
    root: Path,
    records: list[dict[str, Any]],
    plan: list[range],
    todo_shards: list[int],
    backbone: Backbone,
    *,
    batch_size: int | None,
    num_workers: int | None,
    skip_bad: bool,
    progress: bool,
) -> None:
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
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=on_cuda,
        prefetch_factor=4 if workers else None,
    )
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
            for pos, err, note in zip(batch["index"].tolist(), batch["error"], batch["note"]):
                seen[int(shard_of[pos])] += 1
                if note:
                    print(f"warning: {todo[pos]['image_path']}: {note}", file=sys.stderr)
                if not err:
                    keep.append(pos)
                elif skip_bad:
                    skipped[int(shard_of[pos])].append({"image_path": todo[pos]["image_path"], "error": err})
                else:
                    raise SPGError(f"{err}\n  (or pass --skip-bad to skip bad images and write a report)")
            images, masks = batch["image"], batch["mask"]
            if len(keep) < len(batch["error"]):  # index only when something was dropped
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
                    pending.result()  # its buffer is the one `take` hands out next
                info = {
                    "index": i,
                    "begin": plan[i].start,
                    "end": plan[i].stop,
                    "skipped": skipped[i],
                    "rank": world.rank,
                    "world_size": world.size,
                }
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
        self.buffers = [
            torch.empty(per_shard, h * w, backbone.dim, dtype=torch.float16, pin_memory=pinned) for _ in range(2)
        ]
        self.cls_buffers = (
            [torch.empty(per_shard, backbone.dim, dtype=torch.float16, pin_memory=pinned) for _ in range(2)]
            if backbone.has_cls
            else None
        )
        self.current, self.pinned, self.count, self.shard = 0, pinned, 0, -1
        self.mask_bytes = (backbone.image_size**2 + 7) // 8
        self.masks: list[np.ndarray] = []
        self.pending: list[tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor | None]] = []

    def start(self, shard: int) -> None:
        """Fill the current buffer with shard `shard`'s rows, beginning with those already waiting."""
        self.shard = shard
        waiting, self.pending = self.pending, []
        for piece in waiting:
            self.add(*piece)

    def add(
        self, tokens: torch.Tensor, masks: np.ndarray, shard_ids: np.ndarray, cls: torch.Tensor | None = None
    ) -> None:
        """Append `[b, N, D]` tokens, packed masks `[b, P]` and CLS `[b, D]` of shards `shard_ids` `[b]`
        (ascending)."""
        n = int((shard_ids == self.shard).sum())
        self.buffers[self.current][self.count : self.count + n].copy_(tokens[:n], non_blocking=self.pinned)
        if self.cls_buffers is not None:
            self.cls_buffers[self.current][self.count : self.count + n].copy_(cls[:n], non_blocking=self.pinned)
        self.masks.append(masks[:n])
        self.count += n
        if n < tokens.shape[0]:
            self.pending.append((tokens[n:], masks[n:], shard_ids[n:], None if cls is None else cls[n:]))

    def take(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
        """The finished shard (a view of the current buffer); the other buffer becomes current."""
        if self.pinned:
            torch.cuda.synchronize()  # the non-blocking copies into the buffer must be done
        masks = np.concatenate(self.masks) if self.masks else np.zeros((0, self.mask_bytes), np.uint8)
        cls = None if self.cls_buffers is None else self.cls_buffers[self.current][: self.count]
        shard = (self.buffers[self.current][: self.count], masks, cls)
        self.current, self.count, self.masks = 1 - self.current, 0, []
        return shard


def _write_shard(path: Path, shard: tuple[torch.Tensor, np.ndarray, torch.Tensor | None], info: dict[str, Any]) -> None:
    """Write one shard atomically, its own record (`info`) in the safetensors metadata."""
    tokens, masks, cls = shard
    tensors = {"tokens": tokens, "masks": torch.from_numpy(masks)}
    if cls is not None:
        tensors["cls"] = cls
    save_tensors(path, tensors, {"shard": info})
