"""Guards and empty states: a damaged artifact or a missing run gives a message, never a traceback."""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import streamlit as st

from spg_core.errors import SPGError

from .viewmodels.health import RunHealth, check_run, demo_progress
from .viewmodels.landing import built_demo_runs

LANDED = "_demo_landed"  # session_state: the demo runs built when this session last looked


def error_box(exc: BaseException, context: str) -> None:
    """Show an SPGError (or any failure) as one readable message, never a traceback."""
    if isinstance(exc, SPGError):
        lines = str(exc).splitlines()
        body = f"**{context}.** {lines[0]}"
        if exc.path:
            body += f"\n\n`{exc.path}`"
        if exc.fix:
            body += f"\n\nFix: {exc.fix}"
    else:
        body = f"**{context}.** {type(exc).__name__}: {exc}"
    st.error(body, icon=":material/report:")


@contextlib.contextmanager
def guard(context: str) -> Iterator[None]:
    """Run a page section; a damaged artifact shows a message here and the page goes on."""
    try:
        yield
    except SPGError as exc:
        error_box(exc, context)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # damaged files that slip past checks
        error_box(exc, context)


def empty_state(root: Path) -> None:
    """No runs yet: say how to make one."""
    st.markdown(
        f"""<div class="spg-empty">
<h3 style="margin-top:0">No runs yet</h3>
<p>SPG Studio shows the run directories under <code>{html.escape(str(root))}</code>, and there are none.
Make one and it appears here within a few seconds:</p>
<ul>
<li>the built-in demo (synthetic data, no download, a few minutes on a CPU):<br>
<code>spg dashboard --demo</code></li>
<li>your own experiment:<br>
<code>spg run --aux mvtec:PATH --target visa:PATH --out {html.escape(str(root))}/my-run</code></li>
</ul></div>""",
        unsafe_allow_html=True,
    )


def demo_progress_note(root: Path) -> None:
    """The demo builder's progress (RUNS/.demo_progress.json) while demo runs build in the background."""
    progress = demo_progress(root)
    if progress is None or progress["done"]:
        return
    if progress["stopped"]:
        st.warning(f"A demo run is not finished: {progress['text']}.", icon=":material/warning:")
    else:
        build_watch(str(root))


@st.fragment(run_every=4)
def build_watch(root: str) -> None:
    """The build's progress bar, redrawn every few seconds; when a demo run lands, the whole page reruns so
    it fills in with the new run."""
    landed = built_demo_runs(root)
    if st.session_state.setdefault(LANDED, landed) != landed:
        st.session_state[LANDED] = landed
        st.rerun()
    progress = demo_progress(root)
    if progress is not None and not progress["done"] and not progress["stopped"]:
        st.progress(
            progress["fraction"], text=f"Building the demo runs: {progress['text']}. Pages fill in as they land."
        )


def run_health(run: Path, banner: bool = True) -> RunHealth:
    """The run's health check; with `banner`, a one-line warning when something is missing or damaged."""
    health = check_run(run)
    if banner and health.problems:
        st.warning(
            "This run is incomplete or damaged: " + "; ".join(health.problems) + ". "
            "What depends on it is left out below.",
            icon=":material/construction:",
        )
    if banner and health.notes:
        st.info("This run is complete, but " + "; ".join(health.notes) + ".", icon=":material/info:")
    return health


def require(health: RunHealth, files: Sequence[str], purpose: str) -> None:
    """Stop the page with a clear message when the run lacks what it needs."""
    missing = health.missing(*files)
    if missing:
        st.warning(
            f"**{purpose} is not available for this run**: its {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing or damaged.\n\n"
            f"Run directory: `{health.path}`",
            icon=":material/construction:",
        )
        st.stop()


def keep_choice(key: str, options: Sequence[Any]) -> None:
    """Before a selectbox whose options change (filters, another atom): keep its choice while it is
    still an option, else start on the first one (a stale value would not be in the list)."""
    if options and st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
