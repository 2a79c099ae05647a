"""Path confinement for the dashboard: run names resolved inside one runs root, never outside it.

The launcher passes the root in `$SPG_RUNS_ROOT`; every run the app opens goes through
`resolve_run`, which refuses absolute paths, `..` and symlinks that lead out of the root.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SPGError
from .limits import RUNS_ENV
from .runs import list_runs


def runs_root(default: str | Path = "runs") -> Path:
    """The dashboard's runs root: `$SPG_RUNS_ROOT`, else `default`, resolved."""
    return Path(os.environ.get(RUNS_ENV) or default).expanduser().resolve()


def run_names(root: str | Path) -> list[str]:
    """Run directories under `root` as root-relative POSIX names, newest first."""
    root = Path(root).resolve()
    names = []
    for p in list_runs(root):
        try:
            names.append(p.resolve().relative_to(root).as_posix())
        except ValueError:  # a symlink pointing outside the root: not reachable
            continue
    return names


def resolve_run(root: str | Path, name: str) -> Path:
    """The run directory `name` under `root`, refusing anything that escapes the root."""
    root = Path(root).resolve()
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise SPGError(
            f"run name {name!r} is not a path inside the runs root", path=str(root), fix="pick a run from the list"
        )
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise SPGError(f"run {name!r} lies outside the runs root", path=str(root), fix="pick a run from the list")
    if not path.is_dir():
        raise SPGError(f"run {name!r} no longer exists", path=str(path), fix="pick another run or create it again")
    return path
