"""A sweep's figures on a page, redrawn from its sweep.csv."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from . import state
from .viewmodels.sweeps import SWEEP_CSV, sweep_html


def sweep_view(sweep_dir: Path, key: str) -> None:
    """A sweep's figures, redrawn from its sweep.csv (offline: its HTML files load plotly.js from a CDN);
    the HTML files only when the table is missing."""
    table = sweep_dir / SWEEP_CSV
    if table.is_file():
        figures = state.sweep_figures(str(sweep_dir), table.stat().st_mtime)
        if not figures:
            st.info("This sweep varies nothing that has a figure (one setting per axis).")
        for name, fig in figures.items():
            st.plotly_chart(fig, key=f"{key}_{name}", config={"displayModeBar": False})
        return
    for page in sweep_html(sweep_dir):
        st.markdown(f"**{page.stem}**")
        st.iframe(page, height=520)
