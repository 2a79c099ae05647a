"""Small runs for the dashboard tests (AppTest and browser), built once per test session.

A full demo run takes minutes on a CPU; these use a 128-atom SAE and two epochs
per stage (tens of seconds), which is all the pages need to render every
element. Both test modules call `small_runs_root`, which builds into the
session's temporary folder once and re-uses it afterwards.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd

from spg_core.atoms import build_atoms
from spg_core.config import ExtractConfig, GuideConfig, RunConfig, SAEConfig
from spg_core.pipeline import run_experiment
from spg_core.report import write_reports

RUN = "small"
TWIN = "small-twin"  # a copy of RUN, so the Backbones page has two runs to compare


def small_config() -> RunConfig:
    return RunConfig(
        backbone="builtin",
        device="cpu",
        sae=SAEConfig(width=128, k=8, epochs=2),
        guides=GuideConfig(epochs=30, lr=3e-3),
    )  # enough not to saturate (see guides.SATURATED)


def build_small_run(out: Path) -> Path:
    """run_experiment + reports + atoms into `out` (SPG_CACHE decides where the tokens go)."""
    run_experiment(small_config(), out, ExtractConfig(quiet=True))
    write_reports(out)
    build_atoms(out, progress=False, device="cpu")
    return out


REUSE_ENV = "SPG_TEST_RUNS_ROOT"  # a root this module built before (quick loops: skips the build)


def small_runs_root(tmp_path_factory) -> Path:
    """A runs root holding RUN, TWIN and a sweep folder (built on first call of the session), or
    the one named by $SPG_TEST_RUNS_ROOT, built earlier by `build_runs_root` and re-used as is."""
    if os.environ.get(REUSE_ENV):
        return Path(os.environ[REUSE_ENV])
    return build_runs_root(tmp_path_factory.getbasetemp() / "dashboard_runs")


def build_runs_root(root: Path) -> Path:
    """Build RUN, TWIN and the sweep folders into `root` unless a finished build is there."""
    done = root / ".complete"
    if not done.is_file():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        build_small_run(root / RUN)
        shutil.copytree(root / RUN, root / TWIN)
        write_sweep(root / "sweeps" / "width-k")
        write_sweep(root / TWIN / "sweep")  # a run carrying its own sweep
        done.write_text("ok\n")
    return root


def damaged_runs_root(base: Path, good: Path) -> Path:
    """A runs root with a good run and three broken ones: truncated guides, corrupt metrics and
    atom index, and a half-written run (config only, as when training was interrupted)."""
    root = base / "damaged_runs"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copytree(good, root / "good")

    shutil.copytree(good, root / "truncated")
    guides = root / "truncated" / "guides.safetensors"
    guides.write_bytes(guides.read_bytes()[:100])
    maps = root / "truncated" / "target" / "patch_maps.safetensors"
    maps.write_bytes(maps.read_bytes()[:64])

    shutil.copytree(good, root / "corrupt")
    (root / "corrupt" / "metrics.json").write_text('{"mean": {"image_auroc": 0.5')
    index = root / "corrupt" / "atoms" / "index.safetensors"
    index.write_bytes(b"\x00" * 16)

    (root / "half").mkdir()
    shutil.copy(good / "config.json", root / "half" / "config.json")
    return root


def write_sweep(out: Path) -> Path:
    """A small sweep folder in `spg sweep`'s format (sweep.csv): 2 widths x 2 k x 2 aggregations.

    The values are made up (a real sweep trains one SAE per setting: minutes); the dashboard only
    draws what the table holds.
    """
    rows = []
    for width in (64, 128):
        for k in (4, 8):
            for agg in ("max", "mean"):
                setting = {
                    "backbone": "builtin",
                    "width": width,
                    "k": k,
                    "guide": "relu_l1(lambda=0.001)",
                    "guide_variant": "relu_l1",
                    "guide_value": 1e-3,
                    "active_atoms": width // 2,
                    "aggregation": agg,
                    "agg_kind": agg,
                    "agg_T": 0.0,
                }
                for metric in ("image_auroc", "image_ap", "pixel_auroc", "aupro"):
                    value = 0.5 + width / 1000 + k / 100 + (0.05 if agg == "max" else 0.0)
                    for category in ("brushed", "pill", "mean"):
                        rows.append({**setting, "category": category, "metric": metric, "value": value})
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "sweep.csv", index=False)
    (out / "sweep.json").write_text('{"aux": "synthetic-a", "target": "synthetic-b"}\n')
    return out


# -- headless Chromium (the browser tests and `python benchmarks/screenshots.py`) -------------------

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1600, "height": 1700}
READY_TIMEOUT_MS = 180_000  # first page view loads torch and the model on 2 busy cores
BUSY = ('[data-testid="stStatusWidget"]', '[data-testid="stSpinner"]', '[data-testid="stSkeleton"]')


def wait_ready(page, title: str, quiet_s: float = 1.5, timeout_ms: int = READY_TIMEOUT_MS) -> None:
    """Wait until a page's script has finished and its charts are drawn: no status widget, spinner
    or skeleton, and every plotly chart drawn, for `quiet_s` seconds in a row (a page shows several
    spinners one after another)."""
    page.wait_for_selector(f'h1:has-text("{title}")', timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        busy = any(page.query_selector(sel) for sel in BUSY)
        charts = page.query_selector_all('[data-testid="stPlotlyChart"]')
        if busy or not all(c.query_selector(".main-svg") for c in charts):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError(f"{title}: the page was still busy after {timeout_ms / 1000:.0f} s")
