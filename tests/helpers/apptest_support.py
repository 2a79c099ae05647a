"""AppTest helpers shared by the dashboard test modules: open the app on a page and a run (or a link's
query parameters), and read back what a page says."""

from __future__ import annotations

from pathlib import Path

import pytest

from spg_core import run_paths

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/ -> the repository
APP = ROOT / "dashboard" / "app.py"
PAGES = ROOT / "pages"
TIMEOUT = 300  # the first run of a session imports torch and loads the model on 2 busy cores


def open_app(
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    page: str | None = None,
    run: str | None = None,
    query: dict[str, str] | None = None,
) -> AppTest:
    """A fresh session of the app over `root`, on `page` (a script in pages/) with `run` chosen; with
    `query`, the session opens that page's URL with those query parameters (a link)."""
    monkeypatch.setenv(run_paths.RUNS_ENV, str(root))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if query is not None:  # the link's parameters are in the URL from the first run on
        at.query_params.update(query)
    at.run()
    if run is not None and query is None:
        at.selectbox(key="run").set_value(run).run()
    if page is not None:
        at.switch_page(str(PAGES / page)).run()
    assert_clean(at)
    return at


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def texts(at: AppTest) -> str:
    """Everything the page says in markdown, captions, alerts and metrics, as one string."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [a.value for a in (*at.info, *at.warning, *at.error, *at.success)]
    parts += [f"{m.label}: {m.value}" for m in at.metric]
    return "\n".join(str(p) for p in parts)


def metric(at: AppTest, label: str) -> str:
    found = [m.value for m in at.metric if m.label == label]
    assert found, f"no metric {label!r} among {[m.label for m in at.metric]}"
    return found[0]


def frame_with(at: AppTest, *columns: str, without: tuple[str, ...] = ()):
    """The first st.dataframe whose table has all `columns` and none of `without`
    (dataframes carry no key in AppTest)."""
    for element in at.dataframe:
        value = element.value
        if set(columns) <= set(value.columns) and not set(without) & set(value.columns):
            return value
    raise AssertionError(f"no dataframe with columns {columns}")


def plotly_keys(at: AppTest) -> int:
    return len(at.get("plotly_chart"))
