"""The preamble every run page starts with: the chosen run as a RunView, the title, the health banner, and
a stop with a clear message when the run lacks what the page needs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import streamlit as st

from spg_core.errors import SPGError

from . import state
from .guards import empty_state, error_box, require, run_health
from .run_view import RunView
from .viewmodels.health import RunHealth


def page_header(title: str, subtitle: str, run: Path | None = None) -> None:
    st.title(title)
    caption = subtitle if run is None else f"{subtitle} · run **{run.name}**"
    st.caption(caption)


def require_view() -> RunView:
    """The chosen run, or an empty state / message and stop."""
    try:
        view = state.current_view()
    except SPGError as exc:
        error_box(exc, "This run cannot be opened")
        st.stop()
    if view is None:
        empty_state(state.runs_root())
        st.stop()
    return view


def run_page(title: str, subtitle: str, needs: Sequence[str] = (), purpose: str = "") -> tuple[RunView, RunHealth]:
    """Open a page on the chosen run: (its RunView, its health), after the header and the health banner;
    stops with a message when the run lacks one of `needs` (artifact file names) for `purpose`."""
    view = require_view()
    page_header(title, subtitle, view.path)
    health = run_health(view.path)
    if needs:
        require(health, needs, purpose or title)
    return view, health
