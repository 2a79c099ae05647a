"""Session-level state of SPG Studio: the runs root, the chosen run, and loaders that belong to no run.

A run's own loaders are methods of `run_view.RunView`; this module only finds the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from spg_core import run_paths
from spg_core.images import load_image
from spg_core.sweep import sweep_figures as draw_sweep

from .run_view import RunView
from .viewmodels import health, sweeps
from .viewmodels.landing import informative_run

RUN_KEY = "chosen_run"  # session_state key of the chosen run (root-relative name)
RUN_WIDGET = "run"  # key of the sidebar's run selectbox
ATOM_KEY = "atom"  # session_state key of the atom opened on the Atom detail page


def runs_root() -> Path:
    """The runs root the launcher passed in `$SPG_RUNS_ROOT` (default ./runs)."""
    return run_paths.runs_root()


@st.cache_data(ttl=5, show_spinner=False)
def run_names(root: str) -> list[str]:
    """Run names under the root; a short TTL so new runs appear without a restart."""
    return run_paths.run_names(root)


@st.cache_data(ttl=5, show_spinner=False)
def run_overview(root: str):
    return health.run_overview(root)


@st.cache_data(ttl=5, show_spinner=False)
def landing_run(root: str, names: tuple[str, ...]) -> str | None:
    """The run the app opens on (landing.informative_run); a short TTL, so a run that lands is considered."""
    return informative_run(root, list(names))


def current_view() -> RunView | None:
    """The chosen run (validated inside the root) as a RunView, or None when there is none."""
    name = st.session_state.get(RUN_KEY)
    if not name:
        return None
    return RunView.of(run_paths.resolve_run(runs_root(), name))


def view_of(name: str) -> RunView:
    """Run `name` under the root as a RunView (SPGError when it is not a run there)."""
    return RunView.of(run_paths.resolve_run(runs_root(), name))


@st.cache_data(show_spinner=False, max_entries=256)
def image_at(path: str, size: int) -> np.ndarray:
    """An image file as RGB uint8 `[size, size, 3]` (the backbone's input view)."""
    return np.asarray(load_image(path).resize((size, size), Image.BICUBIC))


@st.cache_data(ttl=5, show_spinner=False)
def sweep_names(root: str) -> list[str]:
    return sweeps.sweep_names(root)


@st.cache_data(show_spinner="Drawing the sweep ...", max_entries=16)
def sweep_figures(path: str, mtime: float) -> dict[str, Any]:
    """The sweep's plotly figures (spg_core.sweep.sweep_figures over its sweep.csv)."""
    return draw_sweep(sweeps.sweep_frame(path))
