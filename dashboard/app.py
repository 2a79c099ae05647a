"""SPG Studio: the Streamlit entrypoint (`spg dashboard` runs this file).

It sets the page, the look (logo, CSS), the run picker shared by every page,
and the navigation; each page is a script in the top-level `pages/` folder.
"""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.nav import ASSETS, navigation


def apply_look() -> None:
    """Logo and stylesheet (read on every rerun: they are tiny and this keeps edits live)."""
    st.logo(str(ASSETS / "logo.svg"), icon_image=str(ASSETS / "icon.svg"), size="large")
    css = (ASSETS / "style.css").read_text()
    st.markdown(f"<style>{css}</style>", unsafe_allow_html=True)


def run_picker() -> None:
    """The sidebar's run selector. The choice lives in session_state[RUN_KEY], a plain key that
    survives page switches; the widget (key RUN_WIDGET) is re-seeded from it on every run."""
    root = state.runs_root()
    names = state.run_names(str(root))
    chosen = st.session_state.get(state.RUN_KEY)
    if chosen not in names:
        chosen = st.session_state[state.RUN_KEY] = names[0] if names else None
    with st.sidebar:
        if names:
            st.session_state[state.RUN_WIDGET] = chosen
            st.selectbox(
                "Run",
                names,
                key=state.RUN_WIDGET,
                on_change=_remember_run,
                help="every run directory under the runs root",
            )
        else:
            st.caption("No runs yet")
        st.caption(f"Runs root: `{root}`")


def _remember_run() -> None:
    st.session_state[state.RUN_KEY] = st.session_state[state.RUN_WIDGET]


st.set_page_config(
    page_title="SPG Studio", page_icon=str(ASSETS / "icon.png"), layout="wide", initial_sidebar_state="expanded"
)
apply_look()
page = navigation()
run_picker()
page.run()
