"""The built wheel carries the whole app: installed into a fresh directory and started from
outside the repository, `spg dashboard` answers its health check and every page runs.

The wheel is built from a copy of the packaged folders (pip, no build isolation: no network),
installed with `pip install --no-deps --target` (the dependencies are this environment's), and
every check runs in a subprocess whose only path to the code is that directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dashboard.nav import PAGE_SPECS
from spg_core.launch import free_port, stop_server, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ("pyproject.toml", "README.md", "spg_core", "dashboard", "pages", "assets")

pytestmark = pytest.mark.slow  # a wheel build, an install and a server start: about a minute on 2 busy cores

# Runs inside the installed copy: each page of the navigation opens under AppTest without an
# exception, and the modules come from the install directory, not from the source tree.
PAGE_CHECK = """
import sys
from pathlib import Path

from streamlit.testing.v1 import AppTest

import dashboard
import spg_core
from dashboard.nav import ASSETS, PAGE_SPECS, PAGES

site = Path(sys.argv[1]).resolve()
for module in (dashboard, spg_core):
    assert Path(module.__file__).resolve().is_relative_to(site), module.__file__
assert PAGES.resolve().is_relative_to(site) and (ASSETS / "style.css").is_file(), (PAGES, ASSETS)
app = Path(dashboard.__file__).parent / "app.py"
for script, title, *_ in PAGE_SPECS:
    at = AppTest.from_file(str(app), default_timeout=300)
    at.run()
    at.switch_page(str(PAGES / script)).run()
    assert not at.exception, (script, [e.value for e in at.exception])
    print("page ok:", script, title)
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel, built and installed into a fresh directory (returned)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "project"
    src.mkdir()
    for name in PACKAGED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True)
    (wheel,) = (tmp / "dist").glob("spg_studio-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    inside = {"pages": "bundle/pages", "assets": "assets"}  # repository folder -> its name in the package
    shipped = [
        f"dashboard/{inside[d]}/{p.relative_to(ROOT / d)}"
        for d in inside
        for p in (ROOT / d).rglob("*")
        if "__pycache__" not in p.parts and not p.is_dir()
    ]
    assert not [m for m in shipped if m not in names], sorted(n for n in names if n.startswith("dashboard/"))
    site = tmp / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    return site


def _env(site: Path) -> dict[str, str]:
    """This environment's dependencies, but the code only from `site`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    env["PATH"] = f"{site / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def test_the_wheel_holds_the_pages_and_assets_and_every_page_runs(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"  # outside the repository: nothing found by the source path
    elsewhere.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PAGE_CHECK, str(installed)],
        cwd=elsewhere,
        env={**_env(installed), "SPG_RUNS_ROOT": str(tmp_path / "runs")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("page ok:") == len(PAGE_SPECS), done.stdout


def test_spg_dashboard_from_the_wheel_answers_its_health_check(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    command = [str(installed / "bin" / "spg"), "dashboard", "--runs", str(tmp_path / "runs"), "--port", str(port)]
    proc = subprocess.Popen(
        command,
        cwd=elsewhere,
        env=_env(installed),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until_healthy(port, proc, timeout=180)
    finally:
        stop_server(proc)
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert "SPG Studio on http://" in output, output
