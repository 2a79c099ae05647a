"""Atomic artifact IO: every file appears whole or not at all.

Writers go to a temporary sibling and `os.replace` it into place, so a crash or
Ctrl-C never leaves a half-written artifact behind. Artifacts are safetensors +
JSON only, never pickles.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import SPGError

# What the file system refused, in words, with the fix: the errors a full disk, `ulimit -f` or a
# long name give. Writers in Rust or C++ (safetensors, torch) report them as text, not errno.
DISK_ERRORS: dict[int, tuple[str, str, str]] = {
    errno.ENOSPC: ("No space left on device", "the disk is full", "free space, or write to another disk"),
    errno.EDQUOT: ("Disk quota exceeded", "the disk quota is used up", "free space, or write to another disk"),
    errno.EFBIG: (
        "File too large",
        "the file would exceed the file-size limit (`ulimit -f`) or the file system's largest file",
        "raise the limit (`ulimit -f unlimited`) or write to another file system; a re-run resumes",
    ),
    errno.ENAMETOOLONG: (
        "File name too long",
        "the file name is too long for the file system",
        "use a shorter file or folder name",
    ),
}


def disk_error(exc: BaseException, path: str | os.PathLike | None = None) -> SPGError | None:
    """The SPGError for a write that the file system refused (full, too large, name too long), else None."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None and isinstance(exc, (RuntimeError, SafetensorError)):
        code = next((c for c, (text, _, _) in DISK_ERRORS.items() if text in str(exc)), None)
    if code not in DISK_ERRORS:
        return None
    _, what, fix = DISK_ERRORS[code]
    where = None if path is None else str(path)
    return SPGError(f"cannot write: {what} ({errno.errorcode[code]})", path=where, fix=fix)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success. A write the file
    system refuses (disk full, file-size limit, name too long) becomes an SPGError naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise disk_error(exc, path) or exc from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        refused = disk_error(exc, path)
        if refused is not None:
            raise refused from None
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


# The largest JSON record a run holds is an atom statistics table (a few MB at M = 16384);
# anything past 256 MiB is not one of ours, and reading it whole could exhaust memory.
MAX_JSON_BYTES = 256 * 2**20


def check_regular_file(path: str | os.PathLike, max_bytes: int, *, what: str = "file") -> int:
    """The size of `path`, after checking that it is a regular file of at most `max_bytes`: a
    device such as /dev/zero or a FIFO would make a plain read unbounded or hang. SPGError otherwise."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise SPGError(f"{what} cannot be opened ({exc.strerror})", path=str(path), fix="check the path") from None
    if not stat.S_ISREG(info.st_mode):
        raise SPGError(
            f"{what} is not a regular file (a device, pipe or folder)", path=str(path), fix="point it at a file"
        )
    if info.st_size > max_bytes:
        raise SPGError(
            f"{what} is {info.st_size / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB this reads",
            path=str(path),
            fix="point it at the right file",
        )
    return info.st_size


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Read JSON with an error that names the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise SPGError(
            f"{what} not found",
            path=str(path),
            fix="check the path, or re-create it with the spg command that writes it",
        )
    check_regular_file(path, MAX_JSON_BYTES, what=what)
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
    with _as_damaged(path, what):
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
    return tensors, _decoded(raw_meta)


def safetensors_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON-decoded metadata of a safetensors file, reading its header only (no tensors).
    SPGError naming the file when it is not a readable safetensors file."""
    with _as_damaged(path, "file"), safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    return _decoded(raw)


@contextlib.contextmanager
def _as_damaged(path: str | os.PathLike, what: str) -> Iterator[None]:
    """A safetensors read that fails becomes an SPGError naming the file as damaged or half-written."""
    try:
        yield
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SPGError(
            f"{what} is truncated or not a safetensors file ({exc})",
            path=str(path),
            fix="the file is damaged or half-written: delete it and re-create it",
        ) from None


def _decoded(raw: dict[str, str]) -> dict[str, Any]:
    """safetensors metadata (all strings) with each JSON value decoded; other strings kept as they are."""
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return meta


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
