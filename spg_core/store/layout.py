"""The token store's on-disk format, shared by the writer (extraction.py) and the reader (reader.py).

docs/STORE.md is the normative description; this module holds the rules both sides must agree
on: the store's identity (`store_key`) and folder (`store_dir_for`), how the image list is cut
into shards (`shard_plan`, `shard_name`), how a shard records itself (`shard_record`,
`finished_shards`), how masks are bit-packed (`pack_masks`), and how one tensor of a shard
file is memory-mapped (`memmap_tensor`).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.base import Backbone
from ..data import Dataset, Sample
from ..errors import SPGError
from ..paths import cache_root

STORE_VERSION = 2  # 2: optional `cls` tensor per shard; v1 stores are rebuilt (with a note)
DEFAULT_SHARD_IMAGES = 256


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "data"


def image_records(samples: list[Sample]) -> list[dict[str, Any]]:
    """The manifest's per-image records, in dataset order."""
    return [asdict(s) for s in samples]


TOKEN_DTYPES = {"float16": "F16", "float32": "F32"}  # store dtype -> the safetensors dtype of its shards


def store_key(dataset: Dataset, backbone: Backbone, dtype: str = "float16") -> dict[str, Any]:
    """Everything that must match for stored tokens to be re-usable; `dtype`: one of TOKEN_DTYPES."""
    return {
        "version": STORE_VERSION,
        "dataset": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "identity": backbone.identity(),
        "dtype": dtype,
        "images_sha": hashlib.sha256(json.dumps(image_records(dataset.samples)).encode()).hexdigest(),
    }


def store_dir_for(
    dataset: Dataset, backbone: Backbone, cache_dir: str | Path | None = None, dtype: str = "float16"
) -> Path:
    """The store's folder: `$SPG_CACHE/tokens/<dataset>__<backbone>__<size>__L<layer>__<digest of the key>`."""
    key = store_key(dataset, backbone, dtype)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    ident = backbone.identity()
    name = f"{_slug(dataset.name)}__{_slug(ident['backbone'])}__{ident['image_size']}__L{ident['layer']}__{digest}"
    return cache_root(cache_dir) / "tokens" / name


def shard_plan(num_images: int, shard_images: int) -> list[range]:
    """Planned image positions of each shard: shard i holds positions [i*S, (i+1)*S) of the
    dataset's image list (fewer rows when images were skipped). Fixed by the manifest alone,
    so it is the same for any number of ranks and across resumes."""
    return [range(lo, min(lo + shard_images, num_images)) for lo in range(0, num_images, shard_images)]


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _safetensors_header(path: Path) -> tuple[int, dict[str, Any]]:
    """(header length in bytes, parsed JSON header) of a safetensors file."""
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        return header_len, json.loads(fh.read(header_len))


def shard_record(path: Path) -> dict[str, Any] | None:
    """A shard file's own record (its safetensors metadata `shard`), or None when absent or unreadable."""
    try:
        return json.loads(_safetensors_header(path)[1]["__metadata__"]["shard"])
    except (OSError, KeyError, ValueError, TypeError, struct.error):
        return None


def finished_shards(root: Path, plan: list[range]) -> dict[int, dict[str, Any]]:
    """Planned shards whose file is on disk and records the planned positions: {index: record}.

    A shard file is written whole or not at all (temp file + rename), so its presence is its
    completion; the record check rejects a shard left by another plan (another --shard size)."""
    done = {}
    for i, positions in enumerate(plan):
        info = shard_record(root / shard_name(i))
        if info is not None and (info.get("begin"), info.get("end")) == (positions.start, positions.stop):
            done[i] = info
    return done


def pack_masks(masks: torch.Tensor) -> np.ndarray:
    """`[B, S, S]` {0,1} -> `[B, ceil(S*S/8)]` uint8 (row-major bits; `TokenStore.masks` unpacks)."""
    flat = masks.reshape(masks.shape[0], -1).bool().numpy()
    return np.packbits(flat, axis=1)


def memmap_tensor(path: Path, name: str) -> np.ndarray:
    """Memory-map one tensor of a safetensors file as a read-only numpy array."""
    dtypes = {"F16": np.float16, "F32": np.float32, "U8": np.uint8, "I64": np.int64}
    try:
        header_len, header = _safetensors_header(path)
        info = header[name]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = dtypes[info["dtype"]]
        if path.stat().st_size < 8 + header_len + end:
            raise ValueError("file shorter than its header says")
        return np.memmap(path, dtype=dtype, mode="r", offset=8 + header_len + start, shape=shape)
    except (OSError, KeyError, ValueError, struct.error, json.JSONDecodeError) as exc:
        raise SPGError(
            f"token shard is truncated or damaged ({exc})",
            path=str(path),
            fix="delete the token store folder; it is rebuilt on the next run",
        ) from None
