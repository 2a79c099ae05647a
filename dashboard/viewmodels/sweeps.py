"""Sweep folders (from `spg sweep`) under a runs root or inside a run, and their tidy tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from spg_core.errors import SPGError
from spg_core.runs import CONFIG_FILE as CONFIG

SWEEP_CSV = "sweep.csv"


def sweep_names(root: str | Path) -> list[str]:
    """Sweep folders (holding sweep.csv, from `spg sweep`) under `root`, as root-relative names.
    A run's own RUN/sweep is shown with its run, not listed here."""
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    names = []
    for csv_path in sorted(root.glob(f"**/{SWEEP_CSV}")):
        if csv_path.parent.name == "sweep" and (csv_path.parent.parent / CONFIG).is_file():
            continue
        try:
            names.append(csv_path.parent.resolve().relative_to(root).as_posix())
        except ValueError:  # a symlink out of the root
            continue
    return names


def run_sweep_dir(run_dir: str | Path) -> Path | None:
    """RUN/sweep when the run carries a sweep of its own."""
    path = Path(run_dir) / "sweep"
    return path if (path / SWEEP_CSV).is_file() or any(path.glob("*.html")) else None


def sweep_frame(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy sweep table (one row per setting x category x metric); SPGError when unreadable."""
    path = Path(sweep_dir) / SWEEP_CSV
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SPGError(
            f"sweep table cannot be read ({type(exc).__name__})",
            path=str(path),
            fix="re-run the `spg sweep` command that wrote it",
        ) from None
    needed = {"category", "metric", "value", "aggregation", "guide", "width", "k", "backbone"}
    if not needed <= set(frame.columns):
        raise SPGError(
            f"sweep table lacks columns {sorted(needed - set(frame.columns))}",
            path=str(path),
            fix="re-run the `spg sweep` command that wrote it",
        )
    return frame


def sweep_html(sweep_dir: str | Path) -> list[Path]:
    """Pre-rendered HTML figures of a sweep (shown only when its sweep.csv is missing)."""
    return sorted(Path(sweep_dir).glob("*.html"))
