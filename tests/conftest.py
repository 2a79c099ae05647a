"""Shared fixtures: one private cache for the whole session (synthetic data, token stores),
and the test tiers.

Tiers: a minute-long test carries `@pytest.mark.slow` (one mechanism: the marker, on the test,
its module's `pytestmark` or its `pytest.param`), so that `python -m pytest -m "not slow and not
browser"` is the quick loop; a test that uses one of `SLOW_FIXTURES` (a full run of the builtin
backbone on the synthetic groups) without the marker is refused at collection. The plain
`python -m pytest` runs everything.
"""

import os
import sys
from pathlib import Path

import pytest

SLOW_FIXTURES = frozenset(
    {
        "runs",  # test_end_to_end: `spg run` both directions on the full synthetic groups
        "run_dir",  # test_atoms: a builtin run on synthetic-a -> synthetic-b
        "runs_root",  # test_dashboard / test_browser: the dashboard's runs root (a builtin run)
        "damaged_root",  # test_dashboard: built from runs_root
    }
)


def pytest_collection_modifyitems(config, items):
    """The one `slow` mechanism is the marker on the test; a test that reaches a slow fixture
    without it would put minutes into the quick tier, so collection refuses it."""
    unmarked = [
        item.nodeid
        for item in items
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a slow fixture (" + ", ".join(sorted(SLOW_FIXTURES)) + ") without "
            "@pytest.mark.slow: " + ", ".join(unmarked)
        )


@pytest.fixture(scope="session", autouse=True)
def spg_cache(tmp_path_factory) -> Path:
    """Point SPG_CACHE at a session-private folder so tests never touch ~/.cache/spg."""
    path = tmp_path_factory.mktemp("spg_cache")
    old = os.environ.get("SPG_CACHE")
    os.environ["SPG_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPG_CACHE", None)
    else:
        os.environ["SPG_CACHE"] = old


_MAIN = sys.modules.get("__main__")  # pytest's own, captured before any test or fixture runs


@pytest.fixture(autouse=True)
def keep_main_module():
    """Put pytest's `sys.modules["__main__"]` back after every test.

    Streamlit's AppTest installs the page script it ran as `__main__` and leaves it there; a
    process started later with the "spawn" method (tests/helpers/distributed_support.run_world) then
    re-executes that page script in every child before the worker runs. That rerun of the whole
    app inside a gloo rank aborted one rank in CI (SIGABRT, "terminate called without an active
    exception"), depending on which dashboard test ran last."""
    yield
    if _MAIN is not None and sys.modules.get("__main__") is not _MAIN:
        sys.modules["__main__"] = _MAIN
