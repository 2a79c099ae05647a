"""SPG Studio: the Streamlit entrypoint (`spg dashboard` runs this file).

It sets the page, the look (logo, CSS), the run picker shared by every page (the run also lives in
the URL: `?run=NAME`), the demo build's progress, and the navigation; each page is a script in the
top-level `pages/` folder.
"""

from __future__ import annotations

import streamlit as st

from dashboard import guards, state, url_state
from dashboard.nav import ASSETS, navigation

PICKED = "_run_picked"  # session_state: a run was picked in the sidebar or by a link


def apply_look() -> None:
    """Logo and stylesheet (read on every rerun: they are tiny and this keeps edits live)."""
    st.logo(str(ASSETS / "logo.svg"), icon_image=str(ASSETS / "icon.svg"), size="large")
    css = (ASSETS / "style.css").read_text()
    st.markdown(f"<style>{css}</style>", unsafe_allow_html=True)


def choose_run(names: list[str]) -> str | None:
    """The run to show: a link's `?run=` when it names a run, else the one picked in the sidebar, else the
    most informative run under the root (re-chosen while runs land, until one is picked); an unknown
    name in a link gets a message and the fallback."""
    asked = url_state.incoming((url_state.RUN,)).get(url_state.RUN)
    if asked is not None and asked in names:
        st.session_state[PICKED] = True
        return asked
    chosen = st.session_state.get(state.RUN_KEY)
    if chosen not in names or not st.session_state.get(PICKED):
        chosen = state.landing_run(str(state.runs_root()), tuple(names))
    if asked is not None:
        fallback = f"showing **{chosen}** instead" if chosen else "there are no runs yet"
        st.warning(
            f"The link names run **{asked}**, which is not under the runs root: {fallback}.",
            icon=":material/link_off:",
        )
    return chosen


def run_picker() -> None:
    """The sidebar's run selector. The choice lives in session_state[RUN_KEY], a plain key that
    survives page switches; the widget (key RUN_WIDGET) is re-seeded from it on every run."""
    root = state.runs_root()
    names = state.run_names(str(root))
    chosen = st.session_state[state.RUN_KEY] = choose_run(names)
    url_state.write({url_state.RUN: chosen})
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
    st.session_state[PICKED] = True
    url_state.write({url_state.RUN: st.session_state[state.RUN_KEY]})


st.set_page_config(
    page_title="SPG Studio", page_icon=str(ASSETS / "icon.png"), layout="wide", initial_sidebar_state="expanded"
)
apply_look()
page = navigation()
run_picker()
guards.demo_progress_note(state.runs_root())
page.run()
