"""The page list of SPG Studio, shared by the entrypoint (navigation) and pages (switching)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import streamlit as st

from . import state

# pages/ and assets/ are package data of `dashboard` (in the repository, links to the top-level
# folders): found the same way in a source tree, an editable install and a wheel.
# Not dashboard/pages: Streamlit would take a pages/ folder beside app.py for its own page discovery.
PAGES = Path(str(resources.files("dashboard") / "bundle" / "pages"))
ASSETS = Path(str(resources.files("dashboard") / "assets"))

# (script, title, icon, url path); the first is the home page.
PAGE_SPECS = [
    ("runs.py", "Runs", ":material/folder_open:", "runs"),
    ("maps.py", "Anomaly maps", ":material/grid_on:", "maps"),
    ("atoms.py", "Atoms", ":material/bubble_chart:", "atoms"),
    ("dictionary.py", "Dictionary", ":material/menu_book:", "dictionary"),
    ("atom_detail.py", "Atom detail", ":material/frame_inspect:", "atom"),
    ("backbones.py", "Backbones", ":material/compare:", "backbones"),
    ("methods.py", "Methods side by side", ":material/view_column:", "methods"),
    ("try_image.py", "Try an image", ":material/add_photo_alternate:", "try"),
]
SECTIONS = {"Explore": 5, "Compare and try": 3}  # consecutive PAGE_SPECS per sidebar section
HOME_URL = "home"  # the root URL's page (serves PAGE_SPECS[0]'s script)


def navigation() -> st.Page:
    """st.navigation over PAGE_SPECS plus a home page at the root URL, with our own sidebar links.

    Streamlit serves its default page only at "/", so a default page's own url_path ("/runs")
    would answer "Page not found". The home page is therefore a separate default entry running
    the first script, every PAGE_SPECS page keeps its url_path, and the sidebar (st.page_link,
    grouped into SECTIONS) lists PAGE_SPECS only, so the alias never shows twice.
    """
    pages = [st.Page(PAGES / script, title=title, icon=icon, url_path=url) for script, title, icon, url in PAGE_SPECS]
    script, title, icon, _ = PAGE_SPECS[0]
    home = st.Page(PAGES / script, title=title, icon=icon, url_path=HOME_URL, default=True)
    page = st.navigation([home, *pages], position="hidden")
    with st.sidebar:
        start = 0
        for section, count in SECTIONS.items():
            st.caption(section)
            for p in pages[start : start + count]:
                st.page_link(p)
            start += count
    return page


def open_page(script: str, query: dict[str, str] | None = None) -> None:
    """Switch to another page (by its script name in pages/), with `query` as its URL's parameters (see
    dashboard/url_state.py: the page opens as that link would open it)."""
    st.switch_page(PAGES / script, query_params=query)


def open_atom(run: str, atom: int) -> None:
    """Open the Atom detail page on `atom` of `run` (`/atom?run=RUN&atom=ID`)."""
    st.session_state[state.ATOM_KEY] = int(atom)  # (for an atom page that reads the session)
    open_page("atom_detail.py", {"run": run, "atom": str(int(atom))})
