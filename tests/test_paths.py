"""The one cache-folder rule, seen the same by the token store and the synthetic set."""

from __future__ import annotations

from pathlib import Path

from spg_core.data.synthetic import cache_subdir, synthetic_root
from spg_core.paths import cache_root, default_cache_dir


def test_empty_spg_cache_counts_as_unset(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    for value in ("", "   "):
        monkeypatch.setenv("SPG_CACHE", value)
        assert default_cache_dir() == Path("/home/someone/.cache/spg")
    monkeypatch.delenv("SPG_CACHE")
    assert default_cache_dir() == Path("/home/someone/.cache/spg")


def test_tilde_expanded_in_the_variable_and_in_an_explicit_folder(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.setenv("SPG_CACHE", "~/spg-cache")
    assert default_cache_dir() == Path("/home/someone/spg-cache")
    assert cache_root("~/elsewhere") == Path("/home/someone/elsewhere")
    assert cache_root(None) == Path("/home/someone/spg-cache")


def test_synthetic_set_follows_the_rule(monkeypatch, tmp_path):
    monkeypatch.setenv("SPG_CACHE", str(tmp_path))
    assert synthetic_root() == synthetic_root("") == tmp_path / cache_subdir(0)
    monkeypatch.setenv("SPG_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert synthetic_root() == tmp_path / "home" / ".cache" / "spg" / cache_subdir(0)
