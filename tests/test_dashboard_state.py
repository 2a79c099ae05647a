"""The dashboard's state: links (query parameters) open a view, Maps keeps its state across pages, uploads
of one name both render, the app lands on the most informative run, and `spg dashboard --demo` serves
before its runs are built. Plus the pure pieces behind them (URL parsing, heatmap rows, labels)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers.apptest_support import assert_clean, metric, open_app, texts
from helpers.dashboard_support import RUN, TWIN, small_runs_root

from dashboard import url_state
from dashboard.charts import difference_range
from dashboard.viewmodels import landing
from dashboard.viewmodels.kinds import SORTS, kind_table, page_count, relevant_rows
from dashboard.viewmodels.tables import setting_text
from spg_core import entry
from spg_core.demo import DEMO_RUNS, demo_is_complete
from spg_core.launch import free_port, wait_until_healthy
from spg_core.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return small_runs_root(tmp_path_factory)


# -- pure pieces -----------------------------------------------------------------------------------


def test_url_values_parse_back_and_refuse_cells_off_the_grid():
    grid = (16, 20)
    assert url_state.parse_patch(url_state.format_patch((3, 19)), grid) == (3, 19)
    assert url_state.parse_region(url_state.format_region(((2, 6), (0, 19))), grid) == ((2, 6), (0, 19))
    for bad in ("16,0", "0,20", "-1,2", "3;4", "", None, "a,b"):
        assert url_state.parse_patch(bad, grid) is None, bad
    for bad in ("6-2,0-3", "0-16,0-3", "0-3", "1-2,3-20", None):
        assert url_state.parse_region(bad, grid) is None, bad
    assert url_state.image_name("/data/bottle/test/broken_large/000.png", "bottle") == "bottle/broken_large/000.png"
    assert url_state.parse_int("12") == 12 and url_state.parse_int("#12") is None


def _kind_map(peaks: list[float], spans: list[int]):
    """A stand-in for atoms.kinds.KindMap: atom i peaks at `peaks[i]` in kind 0 and spans `spans[i]`."""
    mean = np.zeros((len(peaks), 3))
    mean[:, 0] = peaks
    return SimpleNamespace(
        atoms=np.arange(100, 100 + len(peaks)),
        kinds=[("a", "x"), ("b", "y"), ("c", "z")],
        mean=mean,
        categories_spanned=lambda: np.asarray(spans),
    )


def test_heatmap_rows_are_the_most_relevant_a_page_at_a_time_in_the_captions_order():
    rng = np.random.default_rng(0)
    peaks = list(rng.uniform(0.1, 1.0, 70)) + [0.0] * 5  # five atoms never fire in a defect
    spans = list(rng.integers(1, 4, 75))
    table = kind_table(_kind_map(peaks, spans), {100: "dead"})
    assert page_count(table, per_page=30) == 3  # 70 relevant atoms
    first = relevant_rows(table, "peak activation (strongest first)", 0, per_page=30)
    assert len(first) == 30 and first["peak"].tolist() == sorted(np.sort(peaks)[::-1][:30].tolist(), reverse=True)
    last = relevant_rows(table, "peak activation (strongest first)", 2, per_page=30)
    assert len(last) == 10 and (last["peak"] > 0).all()  # never-firing atoms are left out
    by_span = relevant_rows(table, "categories spanned (class-general first)", 0, per_page=30)
    assert set(by_span["atom"]) == set(first["atom"])  # the same atoms, another order
    assert by_span["categories"].tolist() == sorted(by_span["categories"], reverse=True)
    assert relevant_rows(table, "atom id", 0)["atom"].is_monotonic_increasing
    assert all(("first" in name) or name == "atom id" for name in SORTS)  # every caption names its order


def test_labels_in_plain_words_and_bar_axes_that_show_differences():
    assert setting_text("weights", None, "builtin") == "built in (no weights)"
    assert setting_text("weights", None, "effnet-lite0") == "the backbone's packaged weights"
    assert setting_text("width", 512) == "512" and setting_text("tau", None) == "not set"
    lo, hi = difference_range([95.0, 97.0, float("nan")])
    assert 90 < lo < 95 and 97 < hi <= 100  # 95 vs 97 fills the axis instead of sharing it with 0-95
    assert difference_range([]) == [0.0, 100.0]


def test_landing_run_prefers_complete_pretrained_runs_with_few_dead_atoms(tmp_path, monkeypatch):
    def make(name: str, backbone: str, dead: int, status: str = "complete") -> str:
        run = tmp_path / name
        (run / "atoms").mkdir(parents=True)
        (run / "config.json").write_text(f'{{"backbone": "{backbone}"}}')
        pd.DataFrame({"tag": ["dead"] * dead + ["general"] * 10}).to_csv(run / "atoms" / "stats.csv", index=False)
        statuses[name] = status
        return name

    statuses: dict[str, str] = {}
    monkeypatch.setattr(
        landing,
        "check_run",
        lambda path: SimpleNamespace(status=statuses[Path(path).name], has=lambda *f: True),
    )
    names = [
        make("a-builtin", "builtin", 0),
        make("b-effnet-many-dead", "effnet-lite0", 9),
        make("c-effnet", "effnet-lite0", 2),
        make("d-training", "dinov3", 0, status="training"),
    ]
    assert landing.informative_run(tmp_path, names) == "c-effnet"
    assert landing.informative_run(tmp_path, names[:1] + names[3:]) == "a-builtin"  # complete beats pretrained
    assert landing.informative_run(tmp_path, []) is None


def test_spg_dashboard_imports_no_engine_and_other_commands_reach_the_cli(tmp_path):
    """The `spg` entry point sends `dashboard` to the launcher, which must not import torch (seconds to
    import, the server should answer first); every other command goes to spg_core.cli."""
    probe = (
        "import sys, spg_core.entry, spg_core.launch; "
        "print(sorted(m for m in ('torch', 'spg_core.cli') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=str(ROOT), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert entry.main(["report", "--run", str(tmp_path / "missing")]) == 2  # the CLI's error path: SPGError


def test_demo_serves_before_its_runs_are_built(tmp_path):
    """`spg dashboard --demo` on an empty root and cache answers on /_stcore/health while no demo run
    exists yet (the build runs beside the server), and stops its server and builder on SIGTERM.
    The time it takes is benchmarks/demo_start.py's figure."""
    port = free_port()
    cmd = [sys.executable, "-m", "spg_core.entry", "dashboard", "--demo", "--port", str(port)]
    cmd += ["--runs", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(port, proc, timeout=120)
        assert not any(demo_is_complete(tmp_path / "runs" / r.name) for r in DEMO_RUNS)
        # The builder starts once the server answers; it logs into the runs root.
        deadline = time.monotonic() + 30
        while not (tmp_path / "runs" / ".demo_build.log").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (tmp_path / "runs" / ".demo_build.log").is_file()
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) is not None
    running = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert not [a for a in running if str(tmp_path) in a]  # the server and the builder are gone with it


# -- links -----------------------------------------------------------------------------------------


def _target_rows(root: Path) -> list[dict]:
    return RunDir(root / RUN).read_scores()


@pytest.mark.slow
def test_a_maps_link_opens_that_image_of_that_run(runs_root, monkeypatch):
    rows = _target_rows(runs_root)
    row = next(r for r in reversed(rows) if not r["label"])  # a good image: never the view's first choice
    name = url_state.image_name(row["image_path"], row["category"])
    at = open_app(runs_root, monkeypatch, page="maps.py", query={"run": TWIN, "image": name, "patch": "2,3"})
    assert at.title[0].value == "Anomaly maps" and at.session_state["chosen_run"] == TWIN
    k = f"{TWIN}::"
    assert at.selectbox(key=k + "image").value == row["index"]
    assert (at.slider(key=k + "row").value, at.slider(key=k + "col").value) == (2, 3)
    assert at.slider(key=k + "region::rows").value == (1, 3)  # a 3 x 3 region around the linked patch
    assert metric(at, "Image score") == f"{row['score']:.3f}" or row["score"] < 1e-3
    written = {k: at.query_params.get(k) for k in ("image", "patch", "region")}
    assert written == {"image": name, "patch": "2,3", "region": "1-3,2-4"}  # the view is a link


@pytest.mark.slow
def test_unknown_run_and_image_in_a_link_say_so_and_show_the_nearest_view(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, query={"run": "no-such-run"})
    assert "The link names run **no-such-run**, which is not under the runs root" in texts(at)
    assert at.selectbox(key="run").value in (RUN, TWIN) and at.title[0].value == "Runs"
    at = open_app(runs_root, monkeypatch, page="maps.py", query={"run": RUN, "image": "x/y/z.png", "patch": "99,0"})
    said = texts(at)
    assert "The link names image **x/y/z.png**, which is not among this run's target images" in said
    assert "patch `99,0` is not a cell" in said
    assert at.selectbox(key=f"{RUN}::image").value is not None  # the view still opens on an image


# -- state that stays ------------------------------------------------------------------------------


@pytest.mark.slow
def test_maps_opens_on_a_true_positive_and_keeps_its_state_across_pages(runs_root, monkeypatch):
    rows = _target_rows(runs_root)
    at = open_app(runs_root, monkeypatch, page="maps.py", run=RUN)
    k = f"{RUN}::"
    first = at.selectbox(key=k + "image").value
    assert rows[first]["label"] == 1 and "TP at" in texts(at)  # a defect the run finds
    other = next(r["index"] for r in rows if r["index"] != first and r["label"] == 1)
    at.selectbox(key=k + "image").set_value(other).run()
    at.slider(key=k + "row").set_value(5).run()
    at.slider(key=k + "col").set_value(6).run()
    at.slider(key=k + "region::rows").set_value((1, 9)).run()
    at.slider(key=k + "region::cols").set_value((2, 4)).run()
    at.slider(key=k + "opacity").set_value(0.8).run()
    assert_clean(at)
    at.switch_page(str(ROOT / "pages" / "atoms.py")).run()
    assert at.title[0].value == "Atoms"
    at.switch_page(str(ROOT / "pages" / "maps.py")).run()
    assert_clean(at)
    assert at.selectbox(key=k + "image").value == other
    assert (at.slider(key=k + "row").value, at.slider(key=k + "col").value) == (5, 6)
    assert at.slider(key=k + "region::rows").value == (1, 9) and at.slider(key=k + "region::cols").value == (2, 4)
    assert at.slider(key=k + "opacity").value == 0.8
    assert "Region: rows 1-9, columns 2-4" in texts(at)


@pytest.mark.slow
def test_two_uploads_with_one_file_name_both_render(runs_root, monkeypatch):
    rows = _target_rows(runs_root)
    first = next(r for r in rows if r["label"])
    second = next(r for r in rows if not r["label"] and r["category"] != first["category"])
    at = open_app(runs_root, monkeypatch, page="try_image.py", run=RUN)
    at.file_uploader(key="uploads").set_value(
        [
            (name, Path(r["image_path"]).read_bytes(), "image/png")
            for name, r in (("000.png", first), ("000.png", second))
        ]
    ).run()
    assert_clean(at)
    scores = [float(m.value) for m in at.metric if m.label == "Image score"]
    assert len(scores) == 2  # both rendered, each with its own map and score
    assert scores == pytest.approx([first["score"], second["score"]], abs=0.02, rel=0.05)
    assert len([e for e in at.expander if e.label.startswith("Region -> atoms")]) == 2


@pytest.mark.slow
def test_runs_page_says_weights_in_words_and_lands_on_the_informative_run(runs_root, monkeypatch, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(runs_root / RUN, root / RUN)
    at = open_app(root, monkeypatch)
    assert at.selectbox(key="run").value == RUN
    settings = next(
        d.value for d in at.dataframe if "setting" in d.value.columns and "weights" in set(d.value["setting"])
    )
    assert settings.set_index("setting").loc["weights", "value"] == "built in (no weights)"
