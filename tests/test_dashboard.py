"""SPG Studio pages under streamlit.testing.v1.AppTest, on a small real run.

Every page is opened on the run, its main widgets are driven, and what it shows
is checked against the run's artifacts. Damaged runs, an empty runs root and
bad uploads must give messages, never exceptions.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from dashboard_support import RUN, TWIN, damaged_runs_root, small_runs_root
from dashboard.viewmodels import health, targets
from spg_core import run_paths, thresholds, uploads
from spg_core.errors import SPGError
from spg_core.runs import RunDir

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
PAGES = ROOT / "pages"
TIMEOUT = 300          # the first run of a session imports torch and loads the model on 2 busy cores


# -- helpers ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return small_runs_root(tmp_path_factory)


def open_app(root: Path, monkeypatch: pytest.MonkeyPatch, page: str | None = None, run: str | None = None) -> AppTest:
    """A fresh session of the app over `root`, on `page` (a script in pages/) with `run` chosen."""
    monkeypatch.setenv(run_paths.RUNS_ENV, str(root))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    if run is not None:
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


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# -- launcher and view models ----------------------------------------------------------------------

def test_launcher_command_is_headless_without_usage_stats():
    from spg_core.launch import app_env, streamlit_command

    cmd = streamlit_command(8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert "--server.headless=true" in cmd and "--browser.gatherUsageStats=false" in cmd
    assert "--server.port=8765" in cmd
    env = app_env("some/runs")
    assert Path(env[run_paths.RUNS_ENV]).is_absolute()


def test_cli_registers_dashboard_command():
    from spg_core.cli import build_parser

    args = build_parser().parse_args(["dashboard", "--demo", "--port", "9000", "--runs", "x"])
    assert args.demo and args.port == 9000 and args.runs == "x"
    assert args.func.__name__ == "cmd_dashboard"


def test_run_paths_cannot_leave_the_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path.parent / "outside_run").mkdir(exist_ok=True)
    assert run_paths.resolve_run(tmp_path, "a") == (tmp_path / "a").resolve()
    for bad in ("../outside_run", "/etc", "a/../../outside_run", "", "missing"):
        with pytest.raises(SPGError):
            run_paths.resolve_run(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent / "outside_run")
    with pytest.raises(SPGError):
        run_paths.resolve_run(tmp_path, "link")


def test_upload_validation():
    good = png_bytes(Image.new("RGB", (64, 48), (200, 10, 10)))
    assert uploads.decode_upload("ok.png", good).size == (64, 48)
    rgba = png_bytes(Image.new("RGBA", (8, 8)))
    assert uploads.decode_upload("alpha.PNG", rgba).mode == "RGB"
    cases = {
        ("notes.txt", b"hello"): "not accepted",
        ("noext", good): "not accepted",
        ("empty.png", b""): "empty",
        ("bad.png", good[:60]): "corrupt",
        ("text.png", b"this is not a png at all"): "corrupt",
        ("huge.png", good + b"\0" * (uploads.MAX_UPLOAD_BYTES + 1)): "limit",
        ("bomb.png", png_bytes(Image.new("1", (9000, 5000)))): "megapixels",
    }
    for (name, data), message in cases.items():
        with pytest.raises(SPGError, match=message):
            uploads.decode_upload(name, data)


def test_best_threshold_and_outcomes():
    thr = thresholds.best_f1_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert thr == pytest.approx(0.35)
    assert [targets.outcome(s, y, 0.5) for s, y in ((0.9, 1), (0.9, 0), (0.1, 1), (0.1, 0))] == ["TP", "FP", "FN", "TN"]


# -- pages on the small run ------------------------------------------------------------------------

def test_empty_root_says_how_to_make_a_run(tmp_path, monkeypatch):
    at = open_app(tmp_path, monkeypatch)
    for page in ("runs.py", "maps.py", "atoms.py", "atom_detail.py", "backbones.py", "try_image.py"):
        at.switch_page(str(PAGES / page)).run()
        assert_clean(at)
        said = texts(at)
        assert "No runs yet" in said and "spg dashboard --demo" in said, page


def test_runs_page(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, run=RUN)
    assert at.title[0].value == "Runs"
    assert set(at.selectbox(key="run").options) == {RUN, TWIN}
    metrics = RunDir(runs_root / RUN).read_metrics()
    assert metric(at, "Image AUROC") == f"{100 * metrics['mean']['image_auroc']:.1f}%"
    overview = frame_with(at, "run", "status")
    assert set(overview["run"]) == {RUN, TWIN} and set(overview["status"]) == {"complete"}
    table = frame_with(at, "Image AUROC", "Pixel AUPRO", without=("run",))
    assert list(table.index) == sorted(metrics["per_category"]) + ["mean"]
    assert "No row of the paper matches" in texts(at)           # synthetic runs have no paper row
    settings = frame_with(at, "setting", "value")
    assert "aux" in settings["setting"].tolist()                # configuration is shown

    # The sweep folder under the root is listed and drawn from its sweep.csv.
    assert at.selectbox(key="sweep_pick").value == "sweeps/width-k"
    assert plotly_keys(at) >= 1 + 2                            # metrics chart + width/k and aggregation figures

    at.selectbox(key="run").set_value(TWIN).run()
    assert_clean(at)
    assert at.subheader[0].value == f"Run {TWIN}"
    assert plotly_keys(at) == 1 + 2 + 2                        # + the twin's own sweep (RUN/sweep)


def test_maps_page_filters_threshold_and_patch(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="maps.py", run=RUN)
    assert at.title[0].value == "Anomaly maps"
    run = RunDir(runs_root / RUN)
    rows = run.read_scores()
    probs, _, _ = run.read_target()
    k = f"{RUN}::"

    category = sorted({r["category"] for r in rows})[1]
    at.selectbox(key=k + "category").set_value(category).run()
    assert_clean(at)
    defect = sorted({r["defect"] for r in rows if r["category"] == category and r["label"]})[0]
    at.selectbox(key=k + "defect").set_value(defect).run()
    picked = at.selectbox(key=k + "image").value
    assert rows[picked]["category"] == category and rows[picked]["defect"] == defect
    assert metric(at, "Image score") == targets.format_score(rows[picked]["score"])

    # Threshold above every score: nothing is called anomalous, every anomalous image is a false negative.
    top = max(r["score"] for r in rows)
    slider = at.slider(key=k + "threshold")
    assert slider.min <= min(r["score"] for r in rows) and slider.max >= top
    at.slider(key=k + "threshold").set_value(slider.max).run()
    at.selectbox(key=k + "category").set_value("all").run()
    at.selectbox(key=k + "defect").set_value("all").run()
    at.selectbox(key=k + "outcome").set_value("false negatives").run()
    assert_clean(at)
    n_anomalous = sum(r["label"] for r in rows if r["score"] < slider.max)
    assert at.selectbox(key=k + "image").label == f"Image ({n_anomalous} shown)"
    at.selectbox(key=k + "outcome").set_value("false positives").run()
    n_false_pos = sum(1 - r["label"] for r in rows if r["score"] >= slider.max)   # a good image may hold the top score
    if n_false_pos:
        assert at.selectbox(key=k + "image").label == f"Image ({n_false_pos} shown)"
    else:
        assert "No image matches" in texts(at)

    # Threshold at the lowest score: every image is called anomalous; pick one and a patch.
    at.slider(key=k + "threshold").set_value(slider.min).run()
    at.selectbox(key=k + "outcome").set_value("true positives").run()
    index = at.selectbox(key=k + "image").value
    assert rows[index]["label"] == 1
    at.slider(key=k + "opacity").set_value(0.8).run()
    at.toggle(key=k + "outline").set_value(False).run()
    at.slider(key=k + "row").set_value(3).run()
    at.slider(key=k + "col").set_value(7).run()
    assert_clean(at)
    # Recomputed from the tokens by the attribution (float32) vs the stored fp16 map.
    assert float(metric(at, "Patch p(anomaly)")) == pytest.approx(float(probs[index, 3, 7]), rel=0.02, abs=1e-3)
    assert plotly_keys(at) >= 2                               # the map and the atom contributions

    # Open one of the patch's atoms on the Atom detail page.
    atom = at.selectbox(key=k + "open_atom").value
    at.button(key=k + "open").click().run()
    assert_clean(at)
    assert at.title[0].value == "Atom detail"
    assert at.selectbox(key=f"{RUN}::atom::pick").value == atom


def test_atoms_page_ranks_and_opens_an_atom(runs_root, monkeypatch):
    from spg_core.atoms import rank_atoms
    from spg_core.guides import GuidePair

    at = open_app(runs_root, monkeypatch, page="atoms.py", run=RUN)
    pair, _ = GuidePair.load(str(runs_root / RUN / "guides.safetensors"))
    ranking = rank_atoms(pair)
    assert metric(at, "Active anomaly atoms") == str(len(ranking["anomaly"]))
    assert metric(at, "Active normal atoms") == str(len(ranking["normal"]))
    assert plotly_keys(at) == 2
    k = f"{RUN}::atoms::"
    table = frame_with(at, "guide", "rank", "atom", "share", "tag", "frequency")
    assert len(table) == len(ranking["anomaly"]) + len(ranking["normal"])

    at.segmented_control(key=k + "guide").set_value("anomaly").run()
    table = frame_with(at, "guide", "rank", "atom")
    assert set(table["guide"]) == {"anomaly"}
    assert table["atom"].tolist() == [a["atom"] for a in ranking["anomaly"]]

    atom = ranking["anomaly"][2]["atom"]
    at.selectbox(key=k + "pick").set_value(atom).run()
    at.button(key=k + "open").click().run()
    assert_clean(at)
    assert at.title[0].value == "Atom detail"
    assert at.selectbox(key=f"{RUN}::atom::pick").value == atom


def test_atom_detail_tiles_histograms_and_ablation(runs_root, monkeypatch):
    from spg_core.atoms import Ablator

    at = open_app(runs_root, monkeypatch, page="atom_detail.py", run=RUN)
    k = f"{RUN}::atom::"
    options = at.selectbox(key=k + "pick").options
    dead = [o for o in options if o.endswith("· dead")]
    if dead:                                                  # a guide may weight atoms that never fire
        at.selectbox(key=k + "pick").set_value(int(dead[0].split()[0][1:])).run()
        assert "never fires on the auxiliary set" in texts(at) and len(at.image) == 0
    live = next(o for o in options if not o.endswith("· dead"))
    atom = int(live.split()[0][1:])
    at.selectbox(key=k + "pick").set_value(atom).run()
    assert len(at.image) == 2 * 9                             # crop + heatmap per top patch
    assert plotly_keys(at) == 2                               # category and activation histograms
    assert any(f'spg-pill neutral">{tag}<' in texts(at) for tag in ("class-general", "class-specific", "shared"))
    at.select_slider(key=k + "count").set_value(3).run()
    assert len(at.image) == 2 * 3

    at.toggle(key=k + f"remove_{atom}_anomaly").set_value(True).run()
    assert_clean(at)
    expected = Ablator(runs_root / RUN, device="cpu").ablate(remove=[atom], guide="anomaly").metrics
    assert metric(at, "Image AUROC") == f"{100 * expected['mean']['image_auroc']:.1f}%"
    assert len(frame_with(at, "category", "before", "after", "change"))
    assert plotly_keys(at) == 4                               # + the maps with and without the atom

    at.toggle(key=k + f"remove_{atom}_anomaly").set_value(False).run()
    assert "Switch it on" in texts(at)


def test_backbones_page_compares_two_runs(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="backbones.py", run=RUN)
    assert sorted(at.multiselect(key="bb_runs").value) == sorted([RUN, TWIN])
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) == 3                                   # two maps + grouped metric bars
    scores = {m.label: m.value for m in at.metric}
    assert scores[RUN] == scores[TWIN]                         # the twin is a copy
    category = at.selectbox(key="bb_category").options[-1]
    at.selectbox(key="bb_category").set_value(category).run()
    at.segmented_control(key="bb_metric").set_value("Pixel AUROC").run()
    assert_clean(at)
    at.multiselect(key="bb_runs").set_value([RUN]).run()
    assert "at least two runs" in texts(at)


def test_try_an_image_scores_uploads_and_refuses_bad_files(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="try_image.py", run=RUN)
    assert "Upload one or more images" in texts(at)
    rows = RunDir(runs_root / RUN).read_scores()
    row = next(r for r in rows if r["label"] == 1)
    real = Path(row["image_path"]).read_bytes()
    at.file_uploader(key="uploads").set_value([
        ("target.png", real, "image/png"),
        ("notes.txt", b"not an image", "text/plain"),
        ("broken.png", real[:500], "image/png"),
        ("huge.png", real + b"\0" * (uploads.MAX_UPLOAD_BYTES + 1), "image/png"),
    ]).run()
    assert_clean(at)
    # The upload goes through the same decoding and backbone as the stored target tokens.
    assert float(metric(at, "Image score")) == pytest.approx(row["score"], abs=0.02, rel=0.05)
    errors = "\n".join(e.value for e in at.error)
    assert "notes.txt was refused" in errors and "not accepted" in errors
    assert "broken.png was refused" in errors and "corrupt" in errors
    assert "huge.png was refused" in errors and "limit" in errors
    assert plotly_keys(at) == 2                                # map + top atoms for the one good image

    # Without an upload, a sample from the target set can be scored instead.
    at.file_uploader(key="uploads").set_value(None).run()
    first_anomalous = next(r["image_path"] for r in rows if r["label"])
    at.selectbox(key="try_sample").set_value(first_anomalous).run()
    assert_clean(at)
    assert not at.error and metric(at, "Image score")


def test_models_are_shared_between_sessions(runs_root, monkeypatch):
    """st.cache_resource: a second browser session re-uses the first one's Predictor."""
    import streamlit as st

    import spg_core.pipeline as pipeline

    st.cache_data.clear()
    st.cache_resource.clear()
    built = []
    original = pipeline.Predictor

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            built.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pipeline, "Predictor", Counting)
    for _ in range(2):
        open_app(runs_root, monkeypatch, page="atoms.py", run=RUN)
    assert len(built) == 1


# -- damaged runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def damaged_root(runs_root, tmp_path_factory) -> Path:
    return damaged_runs_root(tmp_path_factory.mktemp("damaged"), runs_root / RUN)


@pytest.mark.parametrize("page", ["runs.py", "maps.py", "atoms.py", "atom_detail.py", "try_image.py"])
@pytest.mark.parametrize("run", ["truncated", "corrupt", "half"])
def test_damaged_runs_give_messages_not_exceptions(damaged_root, monkeypatch, page, run):
    at = open_app(damaged_root, monkeypatch, page=page, run=run)
    assert at.error or at.warning or at.info, f"{page} on {run} said nothing about the damage"
    # The rest of the app keeps working: switch to the good run on the same page.
    at.selectbox(key="run").set_value("good").run()
    assert_clean(at)
    assert not at.error


def test_damaged_run_states(damaged_root, monkeypatch):
    at = open_app(damaged_root, monkeypatch)
    overview = frame_with(at, "run", "status")
    status = dict(zip(overview["run"], overview["status"]))
    assert status["good"] == "complete" and status["half"] == "training"
    at.selectbox(key="run").set_value("corrupt").run()
    assert "not valid JSON" in texts(at)
    at.selectbox(key="run").set_value("half").run()
    assert "incomplete or damaged" in texts(at)


def test_backbones_page_leaves_out_damaged_runs(damaged_root, monkeypatch):
    at = open_app(damaged_root, monkeypatch, page="backbones.py", run="good")
    at.multiselect(key="bb_runs").set_value(["good", "truncated", "half"]).run()
    assert_clean(at)
    said = texts(at)
    assert "truncated** is left out" in said and "half** is left out" in said
    assert metric(at, "good").startswith("score")


def test_saturated_guides_get_a_note_and_healthy_ones_do_not(tmp_path):
    from spg_core.atomic import write_json

    path = tmp_path / "guides.json"
    assert health.guide_notes(path) == []                                     # no record: nothing to say
    write_json(path, {"config": {"dice": "image", "epochs": 20}, "aux_fit": {"p_defect_median": 2e-7}})
    (note,) = health.guide_notes(path)
    assert "saturated" in note and "2.0e-07" in note and "--dice batch" in note
    write_json(path, {"config": {"dice": "batch", "epochs": 2}, "aux_fit": {"p_defect_median": 8e-8}})
    (note,) = health.guide_notes(path)
    assert "--dice" not in note and "this run: 2" in note
    write_json(path, {"aux_fit": {"p_defect_median": 1e-2, "patch_auroc": 0.83}})
    assert health.guide_notes(path) == []
    path.write_text("{ truncated")
    assert health.guide_notes(path) == []                                     # unreadable: the health check reports files, not this
