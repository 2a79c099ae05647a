"""Quick tier: every page of the app opens once under AppTest, over a tiny run made in seconds.

The full dashboard tests (test_dashboard.py) need the builtin runs root and are `slow`; this
one keeps a broken page out of the quick loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.tiny_data import TINY_RUN_ARGS, tiny_pair
from streamlit.testing.v1 import AppTest

from dashboard.nav import PAGE_SPECS, PAGES
from spg_core.cli import main
from spg_core.run_paths import RUNS_ENV

APP = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
RUN = "tiny"
TIMEOUT = 300  # the first page of the module imports torch and loads the run on 2 busy cores


@pytest.fixture(scope="module")
def runs_of_one(tmp_path_factory) -> Path:
    """A runs root holding one tiny run (random tiny DINOv3, 32 atoms: seconds)."""
    root = tmp_path_factory.mktemp("pages")
    aux, target = tiny_pair(root / "data")
    out = root / "runs" / RUN
    assert main(["run", "--aux", aux, "--target", target, "--out", str(out), *TINY_RUN_ARGS]) == 0
    return root / "runs"


@pytest.mark.parametrize("script, title", [(script, title) for script, title, *_ in PAGE_SPECS])
def test_every_page_opens_on_a_run(runs_of_one, monkeypatch, script, title):
    monkeypatch.setenv(RUNS_ENV, str(runs_of_one))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(str(PAGES / script)).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [title]
    assert "No runs yet" not in [c.value for c in at.caption]  # the tiny run was found and shown
