"""SPG Studio in a real browser: `spg dashboard`'s server, headless Chromium, every page.

Each page must render with no Streamlit exception element; a screenshot of each
goes to docs/screenshots/<page>.png. The Try-an-image page is also driven
through a real upload, and the map's click-to-select through a real click.

Needs Debian's `chromium` (/usr/bin/chromium) and Playwright for Python (no
`playwright install`: the system browser is used). Set SPG_BROWSER_RUNS to a
runs root (e.g. one holding the demo run) to screenshot that instead of the
small test run.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from dashboard_support import small_runs_root

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("headless Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                                               "(pip install playwright)")

SHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1700}
# (screenshot name, url path, title on the page)
PAGES = [("runs", "", "Runs"), ("maps", "maps", "Anomaly maps"), ("atoms", "atoms", "Atoms"),
         ("atom_detail", "atom", "Atom detail"), ("backbones", "backbones", "Backbones"),
         ("try_image", "try", "Try an image")]
READY_TIMEOUT_MS = 180_000       # first page view loads torch and the model on 2 busy cores


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`spg dashboard`'s server on a free localhost port, over the small runs root."""
    from spg_core.launch import free_port, start_server, stop_server, wait_until_healthy

    root = Path(os.environ["SPG_BROWSER_RUNS"]) if os.environ.get("SPG_BROWSER_RUNS") else \
        small_runs_root(tmp_path_factory)
    port = free_port()
    proc = start_server(root, port, quiet=True)
    try:
        wait_until_healthy(port, proc, timeout=120)
        yield f"http://localhost:{port}", root
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    pg = context.new_page()
    yield pg
    context.close()


BUSY = ('[data-testid="stStatusWidget"]', '[data-testid="stSpinner"]', '[data-testid="stSkeleton"]')


def wait_ready(page, title: str, quiet_s: float = 1.5) -> None:
    """Wait until the page's script has finished and its charts are drawn: no status widget,
    spinner or skeleton, and every plotly chart drawn, for `quiet_s` seconds in a row (a page
    shows several spinners one after another)."""
    page.wait_for_selector(f'h1:has-text("{title}")', timeout=READY_TIMEOUT_MS)
    deadline = time.monotonic() + READY_TIMEOUT_MS / 1000
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
    raise AssertionError(f"{title}: the page was still busy after {READY_TIMEOUT_MS / 1000:.0f} s")


def no_exceptions(page) -> None:
    found = page.query_selector_all('[data-testid="stException"]')
    assert not found, [e.inner_text()[:500] for e in found]


@pytest.mark.parametrize("name,path,title", PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_without_exceptions(server, page, name, path, title):
    url, _ = server
    page.goto(f"{url}/{path}")
    wait_ready(page, title)
    no_exceptions(page)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def test_upload_in_the_browser(server, page, tmp_path):
    """A real file upload: one good image is scored, a text file is refused with a message."""
    url, root = server
    page.goto(f"{url}/try")
    wait_ready(page, "Try an image")
    from spg_core.runs import RunDir
    runs = [p.parent.parent for p in root.glob("*/target/scores.csv")]
    rows = RunDir(runs[0]).read_scores()
    image = Path(next(r["image_path"] for r in rows if r["label"]))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.set_input_files('[data-testid="stFileUploaderDropzoneInput"]', [str(image), str(text)])
    try:
        page.wait_for_selector('[data-testid="stMetric"]:has-text("Image score")', timeout=READY_TIMEOUT_MS)
        page.wait_for_selector('text=notes.txt was refused', timeout=READY_TIMEOUT_MS)
    except sync_api.TimeoutError:
        page.screenshot(path=str(tmp_path / "upload_failure.png"))
        raise AssertionError(f"no result after the upload; page says: {page.inner_text('body')[-1200:]!r} "
                             f"(screenshot {tmp_path / 'upload_failure.png'})") from None
    wait_ready(page, "Try an image")
    no_exceptions(page)
    page.screenshot(path=str(SHOTS / "try_image_result.png"))


def test_click_on_the_map_selects_a_patch(server, page):
    """Clicking the anomaly map moves the patch row/column sliders (plotly selection -> callback)."""
    url, _ = server
    page.goto(f"{url}/maps")
    wait_ready(page, "Anomaly maps")
    row = page.locator('input[type="range"][aria-label="Row"]').first
    before = row.get_attribute("value")
    plot = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first
    after = before
    for _ in range(3):            # a click that lands while plotly is still wiring its events is lost
        box = plot.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.85)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and after == before:
            time.sleep(0.5)
            after = row.get_attribute("value")
        if after != before:
            break
    no_exceptions(page)
    assert after != before, "clicking the map did not move the patch selection"
    assert int(after) > 16            # the click was in the lower part of the 32-row grid


def test_ablation_switch_in_the_browser(server, page):
    """The Atom detail page's what-if switch recomputes the metrics without the atom."""
    url, _ = server
    page.goto(f"{url}/atom")
    wait_ready(page, "Atom detail")
    page.get_by_text("Remove atom #").click()
    page.wait_for_selector('[data-testid="stMetric"]:has-text("Image AUROC")', timeout=READY_TIMEOUT_MS)
    wait_ready(page, "Atom detail")
    no_exceptions(page)
    # Streamlit scrolls inside its own container: bring the what-if section to the top of the view.
    page.get_by_text("What if the guide did without it?").evaluate("e => e.scrollIntoView()")
    time.sleep(0.5)
    page.screenshot(path=str(SHOTS / "atom_detail_ablation.png"))
