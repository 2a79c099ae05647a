"""Atomic artifact IO: every file appears whole or not at all.

Writers go to a temporary sibling and `os.replace` it into place, so a crash or
Ctrl-C never leaves a half-written artifact behind. Artifacts are safetensors +
JSON only, never pickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import SPGError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    """JSON has no NaN: store it as null so every reader can parse the file."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically. NaN/inf become null."""
    text = json.dumps(_nan_to_none(obj), indent=2, sort_keys=False, default=_json_default)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise SPGError(
            f"{what} not found",
            path=str(path),
            fix="check the path, or re-create it with the spg command that writes it",
        )
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SPGError(
            f"{what} is not valid JSON ({exc})",
            path=str(path),
            fix="the file is damaged or half-written: delete it and re-create it",
        ) from None


def save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None
) -> None:
    """Save tensors as safetensors, atomically. `metadata` values are JSON-encoded."""
    meta = {k: json.dumps(_nan_to_none(v), default=_json_default) for k, v in (metadata or {}).items()}
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)


def load_tensors(
    path: str | os.PathLike, *, what: str = "tensor file"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a safetensors file and its JSON metadata, with clear errors for missing or truncated files."""
    path = Path(path)
    if not path.is_file():
        raise SPGError(
            f"{what} not found",
            path=str(path),
            fix="check the path, or re-create it with the spg command that writes it",
        )
    try:
        tensors = load_file(str(path))

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SPGError(
            f"{what} is truncated or not a safetensors file ({exc})",
            path=str(path),
            fix="the file is damaged or half-written: delete it and re-create it",
        ) from None
    meta: dict[str, Any] = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return tensors, meta


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
