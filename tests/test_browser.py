"""SPG Studio in a real browser: `spg dashboard`'s server, headless Chromium, every page.

Each page must render with no Streamlit exception element, at its own URL (the home page's
included) with no "Page not found". The new interactions are driven with real mouse input: a
click and a box drawn on the anomaly map, a click on the atom x defect-kind heatmap, the report
button; the report file must open in Chromium without console errors. Screenshots go to the
test's temporary folder; `python benchmarks/screenshots.py --runs DIR` refreshes docs/screenshots.

Needs Debian's `chromium` (/usr/bin/chromium) and Playwright for Python (no `playwright install`:
the system browser is used). Set SPG_BROWSER_RUNS to a runs root to test that instead of the small
test run.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from helpers.dashboard_support import BROWSER_ARGS, CHROMIUM, READY_TIMEOUT_MS, VIEWPORT, small_runs_root, wait_ready

from spg_core.launch import free_port, start_server, stop_server, wait_until_healthy
from spg_core.runs import RunDir

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).is_file():
    pytest.skip("headless Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)"
)

from dashboard.nav import PAGE_SPECS  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`spg dashboard`'s server on a free localhost port, over the small runs root."""
    root = (
        Path(os.environ["SPG_BROWSER_RUNS"])
        if os.environ.get("SPG_BROWSER_RUNS")
        else small_runs_root(tmp_path_factory)
    )
    port = free_port()
    proc = start_server(root, port, quiet=True)
    try:
        wait_until_healthy(port, proc, timeout=120)
        yield f"http://localhost:{port}", root
    finally:
        stop_server(proc)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where this session's screenshots go (never docs/screenshots: tests write no tracked file)."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    pg = context.new_page()
    yield pg
    context.close()


def no_exceptions(page) -> None:
    found = page.query_selector_all('[data-testid="stException"]')
    assert not found, [e.inner_text()[:500] for e in found]


URLS = [("home", "", PAGE_SPECS[0][1])] + [(url, url, title) for _, title, _, url in PAGE_SPECS]


@pytest.mark.parametrize("name,path,title", URLS, ids=[u[0] for u in URLS])
def test_every_url_opens_its_page(server, page, shots, name, path, title):
    url, _ = server
    page.goto(f"{url}/{path}")
    wait_ready(page, title)
    no_exceptions(page)
    body = page.inner_text("body")
    assert "Page not found" not in body and "page not found" not in body.lower(), body[:400]
    page.screenshot(path=str(shots / f"{name}.png"))


def test_upload_in_the_browser(server, page, tmp_path):
    """A real file upload: one good image is scored, a text file is refused with a message."""
    url, root = server
    page.goto(f"{url}/try")
    wait_ready(page, "Try an image")

    runs = [p.parent.parent for p in root.glob("*/target/scores.csv")]
    rows = RunDir(runs[0]).read_scores()
    image = Path(next(r["image_path"] for r in rows if r["label"]))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.set_input_files('[data-testid="stFileUploaderDropzoneInput"]', [str(image), str(text)])
    try:
        page.wait_for_selector('[data-testid="stMetric"]:has-text("Image score")', timeout=READY_TIMEOUT_MS)
        page.wait_for_selector("text=notes.txt was refused", timeout=READY_TIMEOUT_MS)
    except sync_api.TimeoutError:
        page.screenshot(path=str(tmp_path / "upload_failure.png"))
        raise AssertionError(
            f"no result after the upload; page says: {page.inner_text('body')[-1200:]!r} "
            f"(screenshot {tmp_path / 'upload_failure.png'})"
        ) from None
    wait_ready(page, "Try an image")
    no_exceptions(page)
    # A box dragged on the image's map opens the region -> atoms panel (its tables become visible).
    inside = page.get_by_text("Most active inside").first
    assert not inside.is_visible()
    for _ in range(3):
        box = _map_plot(page).bounding_box()
        assert box is not None
        x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.2
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + box["width"] * 0.3, y0 + box["height"] * 0.3, steps=8)
        page.mouse.up()
        if _wait_change(lambda: inside.is_visible(), False):
            break
    wait_ready(page, "Try an image")
    no_exceptions(page)
    assert page.get_by_text("Most active inside").first.is_visible(), "the region panel did not open after a drag"


def _map_plot(page):
    """The anomaly map's drag layer (the first plotly chart of the Anomaly maps page)."""
    return page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first


def _wait_change(read, before, seconds: float = 20):
    deadline = time.monotonic() + seconds
    after = read()
    while time.monotonic() < deadline and after == before:
        time.sleep(0.5)
        after = read()
    return after


def test_click_on_the_map_selects_a_patch(server, page):
    """Clicking the anomaly map moves the patch row/column sliders (plotly selection -> callback)."""
    url, _ = server
    page.goto(f"{url}/maps")
    wait_ready(page, "Anomaly maps")
    row = page.locator('input[type="range"][aria-label="Row"]').first
    before = row.get_attribute("value")
    after = before
    for _ in range(3):  # a click that lands while plotly is still wiring its events is lost
        box = _map_plot(page).bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.85)
        after = _wait_change(lambda: row.get_attribute("value"), before)
        if after != before:
            break
    no_exceptions(page)
    assert after != before, "clicking the map did not move the patch selection"
    assert int(after) > 16  # the click was in the lower part of the 32-row grid
    # On a target image too, the region follows the click: a 3 x 3 box around the clicked patch.
    wait_ready(page, "Anomaly maps")
    shown = _shown_region(page)
    assert shown is not None and shown[0] <= int(after) <= shown[1] and shown[1] - shown[0] <= 2, (shown, after)


def test_box_on_the_map_selects_a_region_and_its_atoms(server, page, shots):
    """Dragging a box on the map sets the region (its range sliders) and lists the region's atoms."""
    url, _ = server
    page.goto(f"{url}/maps")
    wait_ready(page, "Anomaly maps")
    page.get_by_text("Drag draws a region box").click()
    wait_ready(page, "Anomaly maps")
    rows = page.locator('[data-testid="stSlider"]:has-text("Region rows")').first
    before = rows.inner_text()
    after = before
    for _ in range(3):
        box = _map_plot(page).bounding_box()
        assert box is not None
        x0, y0 = box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.55
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move(x0 + box["width"] * 0.2, y0 + box["height"] * 0.3, steps=8)
        page.mouse.up()
        after = _wait_change(lambda: rows.inner_text(), before)
        if after != before:
            break
    wait_ready(page, "Anomaly maps")
    no_exceptions(page)
    assert after != before, "drawing a box did not set the region"
    # The region -> atoms tables answer for the drawn box: the caption gives the sliders' rows, and
    # the activation table has rows.
    shown = _shown_region(page)
    thumbs = [int(t) for t in rows.locator('[data-testid="stSliderThumbValue"]').all_inner_texts()]
    assert shown is not None and list(shown[:2]) == thumbs, (shown, thumbs)
    assert _table_rows(page, "Most active inside") > 0
    page.get_by_text("Most active inside").first.evaluate("e => e.scrollIntoView()")
    page.screenshot(path=str(shots / "maps_region.png"))


REGION = re.compile(r"Region: rows (\d+)-(\d+), columns (\d+)-(\d+) \((\d+) patches\)")


def _shown_region(page) -> tuple[int, ...] | None:
    """(row0, row1, col0, col1, patches) from the region caption on the page, if one is shown."""
    found = REGION.search(page.inner_text("body"))
    return tuple(int(g) for g in found.groups()) if found else None


def _table_rows(page, heading: str) -> int:
    """Data rows of the st.dataframe under a markdown heading (the grid's accessible table)."""
    column = page.locator('[data-testid="stColumn"]', has_text=heading).last
    return column.locator('[data-testid="stDataFrame"] table tbody tr').count()


def test_click_on_an_auxiliary_map_selects_a_region_and_shows_its_atoms(server, page, shots):
    """On an auxiliary image, a click on the map centres a 3 x 3 region on the clicked patch and the
    region -> atoms tables list atoms for it."""
    url, _ = server
    page.goto(f"{url}/maps")
    wait_ready(page, "Anomaly maps")
    page.get_by_role("radio", name="auxiliary set").click()  # the segmented control's option
    wait_ready(page, "Anomaly maps")
    assert page.get_by_text("Auxiliary image and ground truth").count() == 1
    before = _shown_region(page)
    after = before
    for _ in range(3):
        box = _map_plot(page).bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.15, box["y"] + box["height"] * 0.85)  # lower left
        after = _wait_change(lambda: _shown_region(page), before)
        if after != before:
            break
    wait_ready(page, "Anomaly maps")
    no_exceptions(page)
    assert after is not None and after != before, "clicking the auxiliary map did not select a region"
    r0, r1, c0, c1, patches = after
    grid = int(page.locator('input[type="range"][aria-label="Region rows — end"]').first.get_attribute("max")) + 1
    assert r1 - r0 <= 2 and c1 - c0 <= 2 and patches == (r1 - r0 + 1) * (c1 - c0 + 1)
    assert (r0 + r1) / 2 > grid / 2 > (c0 + c1) / 2  # the lower-left quarter, where the click was
    assert _table_rows(page, "Most active inside") > 0
    page.get_by_text("Region → atoms").first.evaluate("e => e.scrollIntoView()")
    page.screenshot(path=str(shots / "maps_auxiliary_region.png"))


def test_heatmap_cell_opens_its_patches(server, page, shots):
    """Clicking a cell of the atom x defect-kind heatmap picks its atom and kind, and shows the patches."""
    url, _ = server
    page.goto(f"{url}/atoms")
    wait_ready(page, "Atoms")

    def shown():  # the captions of the cell's patches: "category · defect · s=..."
        return tuple(page.locator('[data-testid="stImageCaption"]').all_inner_texts())

    before = shown()
    heat = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').nth(2)
    heat.evaluate("e => e.scrollIntoView()")
    after = before
    for _ in range(3):
        box = heat.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.95, box["y"] + box["height"] * 0.97)  # last column, last row
        after = _wait_change(shown, before)
        if after != before:
            break
    wait_ready(page, "Atoms")
    no_exceptions(page)
    assert after != before, "clicking the heatmap did not pick its cell"
    page.screenshot(path=str(shots / "atoms_kinds.png"))


def test_report_button_and_the_report_opens_offline_without_errors(server, page, browser, shots):
    """The Runs page writes the report; the file opens in Chromium with no console error and holds
    every section, with no request to the network."""
    url, root = server
    page.goto(f"{url}/runs")
    wait_ready(page, "Runs")
    page.get_by_role("button", name="Write run report").click()
    page.wait_for_selector('[data-testid="stDownloadButton"]', timeout=READY_TIMEOUT_MS)
    no_exceptions(page)
    reports = sorted(root.glob("*/report.html"), key=lambda p: p.stat().st_mtime)
    assert reports, "no report.html written"
    context = browser.new_context(viewport=VIEWPORT, offline=True)
    viewer = context.new_page()
    errors, requests = [], []
    viewer.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    viewer.on("pageerror", lambda e: errors.append(str(e)))
    viewer.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
    viewer.goto(reports[-1].as_uri())
    viewer.wait_for_load_state("load")
    assert not errors and not requests, (errors, requests)
    for section in ("summary", "threshold", "metrics", "errors", "atoms"):
        assert viewer.locator(f"section#{section}").count() == 1, section
    broken = viewer.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0 and viewer.evaluate("document.images.length") >= 2
    viewer.screenshot(path=str(shots / "report.png"), full_page=True)
    context.close()


def test_steering_slider_in_the_browser(server, page):
    """The Atom detail page's steering slider, moved to 0x (the atom removed), recomputes the metrics."""
    url, _ = server
    page.goto(f"{url}/atom")
    wait_ready(page, "Atom detail")
    slider = page.locator('[data-testid="stSlider"]').filter(has_text="Scale atom #")
    slider.get_by_role("slider").first.focus()
    page.keyboard.press("Home")  # the slider's first value: 0x
    page.wait_for_selector('[data-testid="stMetric"]:has-text("Image AUROC")', timeout=READY_TIMEOUT_MS)
    wait_ready(page, "Atom detail")
    no_exceptions(page)
