"""The page list of SPG Studio, shared by the entrypoint (navigation) and pages (switching)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "pages"
ASSETS = ROOT / "assets"

# (script, title, icon, url path); the first is the home page.
PAGE_SPECS = [
    ("runs.py", "Runs", ":material/folder_open:", "runs"),
    ("maps.py", "Anomaly maps", ":material/grid_on:", "maps"),
    ("atoms.py", "Atoms", ":material/bubble_chart:", "atoms"),
    ("atom_detail.py", "Atom detail", ":material/frame_inspect:", "atom"),
    ("backbones.py", "Backbones", ":material/compare:", "backbones"),
    ("try_image.py", "Try an image", ":material/add_photo_alternate:", "try"),
]
SECTIONS = {"Explore": 4, "Compare and try": 2}     # consecutive PAGE_SPECS per sidebar section


def navigation() -> st.navigation:
    """st.navigation over PAGE_SPECS, grouped into SECTIONS."""
    pages = [st.Page(PAGES / script, title=title, icon=icon, url_path=url, default=i == 0)
             for i, (script, title, icon, url) in enumerate(PAGE_SPECS)]
    grouped, start = {}, 0
    for section, count in SECTIONS.items():
        grouped[section] = pages[start:start + count]
        start += count
    return st.navigation(grouped)


def open_page(script: str) -> None:
    """Switch to another page (by its script name in pages/)."""
    st.switch_page(PAGES / script)
