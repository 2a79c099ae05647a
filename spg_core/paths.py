"""Where SPG Studio keeps its caches (token stores, the synthetic data set)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SPG_CACHE"


def default_cache_dir() -> Path:
    """``$SPG_CACHE`` (``~`` expanded), else ``~/.cache/spg``; an empty or blank ``SPG_CACHE``
    counts as unset (a shell's ``SPG_CACHE=`` must not mean the current folder)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "spg"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder to use: ``cache_dir`` when given (``~`` expanded), else the default."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
