"""Shared fixtures: one private cache for the whole session (synthetic data, token stores)."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def spg_cache(tmp_path_factory) -> Path:
    """Point SPG_CACHE at a session-private folder so tests never touch ~/.cache/spg."""
    path = tmp_path_factory.mktemp("spg_cache")
    old = os.environ.get("SPG_CACHE")
    os.environ["SPG_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPG_CACHE", None)
    else:
        os.environ["SPG_CACHE"] = old
