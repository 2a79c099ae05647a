"""Refresh the README's screenshots (docs/screenshots/*.png): every page of SPG Studio in headless Chromium.

    python benchmarks/screenshots.py --runs RUNS_ROOT [--run NAME] [--out docs/screenshots]

The only command that writes docs/screenshots/ (the browser tests write to a temporary folder).
Starts `spg dashboard`'s server over RUNS_ROOT (e.g. the demo runs), opens each page of
PAGE_SPECS at 1600 px on RUN (`?run=RUN`), waits until it is drawn, and saves one PNG per page.
Needs Debian's chromium and Playwright for Python (no browser download).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers.dashboard_support import BROWSER_ARGS, CHROMIUM, VIEWPORT, wait_ready  # noqa: E402

from dashboard.nav import PAGE_SPECS  # noqa: E402
from spg_core.launch import free_port, start_server, stop_server, wait_until_healthy  # noqa: E402


def take(runs: Path, out: Path, run: str | None) -> list[Path]:
    """One screenshot per page into `out`; returns the files written."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 -- optional test dependency (browser tier)

    port = free_port()
    proc = start_server(runs, port, quiet=True)
    written = []
    try:
        wait_until_healthy(port, proc, timeout=120)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            page = browser.new_context(viewport=VIEWPORT).new_page()
            for script, title, _, url in PAGE_SPECS:
                page.goto(f"http://localhost:{port}/{url}" + (f"?run={run}" if run else ""))  # a link to the run
                wait_ready(page, title)
                out.mkdir(parents=True, exist_ok=True)
                path = out / f"{Path(script).stem}.png"
                page.screenshot(path=str(path))
                written.append(path)
                print(f"{path}")
                if url == "maps":  # the auxiliary view: a defect's map and its region's atoms
                    page.get_by_role("radio", name="auxiliary set").click()
                    wait_ready(page, title)
                    path = out / "maps_auxiliary.png"
                    page.screenshot(path=str(path))
                    written.append(path)
                    print(f"{path}")
                if url == "try":  # the README shows the page with a scored sample
                    page.locator('[data-testid="stSelectbox"]:has-text("try a sample")').first.click()
                    page.get_by_role("option").nth(1).click()
                    page.wait_for_selector('[data-testid="stMetric"]:has-text("Image score")', timeout=300_000)
                    wait_ready(page, title)
                    path = out / "try_image_result.png"
                    page.screenshot(path=str(path))
                    written.append(path)
                    print(f"{path}")
            browser.close()
    finally:
        stop_server(proc)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, type=Path, help="runs root to show (e.g. the demo's)")
    parser.add_argument("--run", default=None, help="run to open (default: the one the app lands on)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    take(args.runs, args.out, args.run)


if __name__ == "__main__":
    main()
