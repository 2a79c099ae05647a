"""The run the app opens on: the most informative one under the root (no Streamlit)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from spg_core.atomic import read_json
from spg_core.atoms.build import STATS_CSV
from spg_core.demo import read_demo_progress
from spg_core.errors import SPGError
from spg_core.runs import CONFIG_FILE

from .health import check_run

UNTRAINED = {"builtin"}  # backbones without pretrained weights: their atoms say less


def dead_atoms(run: Path) -> float:
    """How many of the run's atoms never fire on the auxiliary set (tag 'dead' in RUN/atoms/stats.csv);
    infinity when the run has no readable statistics."""
    try:
        tags = pd.read_csv(run / STATS_CSV, usecols=["tag"])["tag"]
    except (OSError, ValueError, KeyError):
        return math.inf
    return float((tags == "dead").sum())


def informative_run(root: str | Path, names: list[str]) -> str | None:
    """The run to open first: a complete run before an incomplete one, a pretrained backbone before an
    untrained one, then the fewest dead atoms; ties keep the listing order."""
    if not names:
        return None

    def rank(name: str) -> tuple[bool, bool, float]:
        path = Path(root) / name
        health = check_run(path)
        try:
            backbone = str(read_json(path / CONFIG_FILE).get("backbone", "")) if health.has(CONFIG_FILE) else ""
        except SPGError:
            backbone = ""
        return health.status != "complete", backbone in UNTRAINED, dead_atoms(path)

    return min(names, key=rank)


def built_demo_runs(root: str | Path) -> tuple[str, ...]:
    """The demo runs whose background build has finished (none when no demo build was started)."""
    try:
        runs = read_demo_progress(root)
    except SPGError:
        return ()
    return tuple(sorted(name for name, entry in runs.items() if entry.get("stage") == "done"))
