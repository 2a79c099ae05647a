"""SPG Studio: server-side rerun time per page, and the app's memory with 1 and 5 browser sessions.

    python benchmarks/dashboard_bench.py [--runs DIR] [--reruns 10] [--no-browser]

1. Rerun time: each page is opened under `streamlit.testing.v1.AppTest` on the
   demo run (built first if missing), warmed up (caches filled), then re-run
   `--reruns` times; the median and max wall time of a rerun is the
   server-side cost of one interaction (script + cached loaders; the browser's
   rendering is not included). Target: < 300 ms per page. AppTest compiles the
   page scripts again on every rerun (a fresh ScriptCache each run), which the
   server does once per script (one ScriptCache per server): the reruns share
   one, as the server does, and the compile cost is printed on its own line.
   Two more rows: the Anomaly maps page after a new region is chosen, on a
   target and on an auxiliary image (the region -> atoms query uncached).
   And the atom switch: Atom detail re-run after picking an atom not shown
   before in this session (every per-atom view of that atom uncached; the run's
   models and summaries loaded). Target for the atom views: < 1 s.
2. Memory: `spg dashboard`'s server is started, 1 then 5 headless Chromium
   pages open the Anomaly maps page, and the server's RSS is read from
   /proc/PID/status. Sessions share the models (st.cache_resource), so the
   5-session figure should be close to the 1-session one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from streamlit import config as streamlit_config
from streamlit.runtime.scriptrunner.script_cache import ScriptCache
from streamlit.testing.v1 import AppTest, app_test, local_script_runner

from spg_core.demo import DEMO_NAME, ensure_demo_run
from spg_core.launch import free_port, start_server, stop_server, wait_until_healthy
from spg_core.run_paths import RUNS_ENV
from spg_core.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent
PAGE_DIR = ROOT / "pages"
sys.path.insert(0, str(ROOT / "tests"))  # helpers/, shared with the tests

from helpers.dashboard_support import BROWSER_ARGS, CHROMIUM  # noqa: E402

PAGES = [
    p
    for p in [
        *("runs.py", "maps.py", "atoms.py", "dictionary.py", "atom_detail.py"),
        *("methods.py", "backbones.py", "try_image.py"),
    ]
    if (PAGE_DIR / p).is_file()  # the same script measures an older tree (before/after figures)
]
TARGET_MS = 300.0
ATOM_TARGET_MS = 1000.0


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def serve_as_spg_dashboard() -> None:
    """AppTest under the options `spg dashboard` serves with (spg_core.launch.streamlit_command) that
    change a rerun's cost: no usage statistics (Streamlit's own telemetry inspects every call's
    arguments, about a third of an atom switch when left on)."""
    streamlit_config.set_option("browser.gatherUsageStats", False)


def share_script_cache() -> None:
    """Make every AppTest run use one ScriptCache (compiled page scripts), as the server's Runtime does."""
    shared = ScriptCache()
    app_test.ScriptCache = local_script_runner.ScriptCache = lambda: shared


def compile_ms(pages: list[str]) -> float:
    """Wall time of compiling app.py and the page scripts as Streamlit does (with its magic pass), ms."""
    t0 = time.perf_counter()
    cache = ScriptCache()
    for script in [ROOT / "dashboard" / "app.py"] + [PAGE_DIR / p for p in pages]:
        cache.get_bytecode(str(script))
    return 1000 * (time.perf_counter() - t0)


def rerun_times(runs_root: Path, run: str, reruns: int) -> list[tuple[str, float, float]]:
    """(page, median ms, max ms) of a warm rerun of every page."""
    os.environ[RUNS_ENV] = str(runs_root)
    out = []
    for page in PAGES:
        at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=600)
        at.run()
        at.selectbox(key="run").set_value(run).run()
        at.switch_page(str(PAGE_DIR / page)).run()
        if page == "try_image.py":  # score a sample image, so the rerun shows a result
            at.selectbox(key="try_sample").set_value(_first_sample(runs_root / run)).run()
        if at.exception:
            raise RuntimeError(f"{page}: {[e.value for e in at.exception]}")
        at.run()  # warm-up: every cache filled
        times = []
        for _ in range(reruns):
            t0 = time.perf_counter()
            at.run()
            times.append(1000 * (time.perf_counter() - t0))
        out.append((page, statistics.median(times), max(times)))
    return out


def region_times(runs_root: Path, run: str, reruns: int, source: str = "target set") -> tuple[float, float]:
    """(median ms, max ms) of a rerun of the Anomaly maps page after moving the region, on images of
    `source` ('target set' or 'auxiliary set'): each time a region not seen before, so the region ->
    atoms query (averages over the image's cached codes and attribution) is computed, not served
    from the cache."""
    os.environ[RUNS_ENV] = str(runs_root)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=600)
    at.run()
    at.selectbox(key="run").set_value(run).run()
    at.switch_page(str(PAGE_DIR / "maps.py")).run()
    at.segmented_control(key=f"{run}::source").set_value(source).run()
    key = f"{run}::" + ("aux::" if source == "auxiliary set" else "") + "region::"
    rows_max = at.slider(key=key + "rows").max
    at.slider(key=key + "rows").set_value((0, 1)).run()  # warm-up
    times = []
    for i in range(reruns):
        r0 = (2 + i) % max(rows_max - 2, 1)
        t0 = time.perf_counter()
        at.slider(key=key + "rows").set_value((r0, r0 + 2)).run()
        times.append(1000 * (time.perf_counter() - t0))
        if at.exception:
            raise RuntimeError(f"maps.py region ({source}): {[e.value for e in at.exception]}")
    return statistics.median(times), max(times)


def atom_switch_times(runs_root: Path, run: str, reruns: int) -> tuple[float, float, float]:
    """(first open ms, median ms, max ms) of Atom detail: the page's first open in a new session (the
    server-wide caches already hold the run's models and, from the per-page pass, its first atom's
    views), then a rerun after picking each of
    `reruns` atoms not shown before in this session (their tiles, histograms and neighbours uncached)."""
    os.environ[RUNS_ENV] = str(runs_root)
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=600)
    at.run()
    at.selectbox(key="run").set_value(run).run()
    t0 = time.perf_counter()
    at.switch_page(str(ROOT / "pages" / "atom_detail.py")).run()
    first = 1000 * (time.perf_counter() - t0)
    pick = at.selectbox(key=f"{run}::atom::pick")
    options = [int(str(o).split()[0].lstrip("#")) for o in pick.options]
    times = []
    for atom in options[1 : reruns + 1]:
        t0 = time.perf_counter()
        at.selectbox(key=f"{run}::atom::pick").set_value(atom).run()
        times.append(1000 * (time.perf_counter() - t0))
        if at.exception:
            raise RuntimeError(f"atom_detail.py atom {atom}: {[e.value for e in at.exception]}")
    return first, statistics.median(times), max(times)


def _first_sample(run_dir: Path) -> str:
    return next(r["image_path"] for r in RunDir(run_dir).read_scores() if r["label"])


def session_memory(runs_root: Path) -> list[tuple[int, float]]:
    """[(sessions, server RSS MiB)] after 0, 1 and 5 browser sessions on the Anomaly maps page."""
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 -- optional test dependency (browser tier)

    port = free_port()
    proc = start_server(runs_root, port, quiet=True)
    results = []
    try:
        wait_until_healthy(port, proc, timeout=120)
        results.append((0, rss_mb(proc.pid)))
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
            pages = []
            for target in (1, 5):
                while len(pages) < target:
                    page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
                    page.goto(f"http://localhost:{port}/maps")
                    _wait_ready(page)
                    pages.append(page)
                time.sleep(2.0)
                results.append((target, rss_mb(proc.pid)))
            browser.close()
    finally:
        stop_server(proc)
    return results


def _wait_ready(page, timeout: float = 300.0, quiet_s: float = 1.5) -> None:
    """The page is drawn: no status widget, spinner or skeleton, and its charts drawn, for `quiet_s`."""
    page.wait_for_selector('h1:has-text("Anomaly maps")', timeout=timeout * 1000)
    busy_selectors = ('[data-testid="stStatusWidget"]', '[data-testid="stSpinner"]', '[data-testid="stSkeleton"]')
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        busy = any(page.query_selector(sel) for sel in busy_selectors)
        charts = page.query_selector_all('[data-testid="stPlotlyChart"]')
        if busy or not charts or not all(c.query_selector(".main-svg") for c in charts):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.2)
    raise TimeoutError("the page did not finish rendering")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(ROOT / "runs"), help="runs root (the demo run is built there if missing)")
    parser.add_argument("--reruns", type=int, default=10)
    parser.add_argument("--no-browser", action="store_true", help="skip the memory measurement")
    parser.add_argument("--run", default=None, help="measure this run of the root instead of building the demo")
    args = parser.parse_args(argv)

    runs_root = Path(args.runs).resolve()
    if args.run is None:
        t0 = time.perf_counter()
        ensure_demo_run(runs_root, progress=False)
        print(f"demo run ready under {runs_root} ({time.perf_counter() - t0:.1f} s)")
        run = DEMO_NAME
    else:
        run = args.run

    print(
        f"\ncompiling app.py and the {len(PAGES)} page scripts (AppTest does it on every rerun, the server "
        f"once): {compile_ms(PAGES):.1f} ms"
    )
    share_script_cache()
    serve_as_spg_dashboard()
    print(f"\nserver-side rerun time per page (AppTest, warm caches, {args.reruns} reruns)")
    print(f"{'page':<18}{'median ms':>10}{'max ms':>10}  target < {TARGET_MS:.0f} ms")
    for page, median, worst in rerun_times(runs_root, run, args.reruns):
        flag = "ok" if median < TARGET_MS else "SLOW"
        print(f"{page:<18}{median:>10.1f}{worst:>10.1f}  {flag}")
    for source, label in (("target set", "maps.py + region"), ("auxiliary set", "aux + region")):
        median, worst = region_times(runs_root, run, args.reruns, source)
        flag = "ok" if median < TARGET_MS else "SLOW"
        print(f"{label:<18}{median:>10.1f}{worst:>10.1f}  {flag}  (a new region each rerun: uncached query)")
    first, median, worst = atom_switch_times(runs_root, run, args.reruns)
    flag = "ok" if median < ATOM_TARGET_MS else "SLOW"
    print(f"{'atom switch':<18}{median:>10.1f}{worst:>10.1f}  {flag}  (a new atom each rerun; target < 1 s)")
    print(
        f"{'atom detail open':<18}{first:>10.1f}{'':>10}  (first open in a new session; "
        "the server's caches already hold its first atom)"
    )

    if args.no_browser:
        return 0
    if not Path(CHROMIUM).is_file():
        print("\nmemory: skipped (no /usr/bin/chromium; apt-get install -y chromium)")
        return 0
    print("\nserver memory (RSS) with browser sessions on the Anomaly maps page")
    for sessions, rss in session_memory(runs_root):
        print(f"{sessions} session{'s' if sessions != 1 else ' '}  {rss:8.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
