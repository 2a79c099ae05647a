"""SPG Studio pages under streamlit.testing.v1.AppTest, on a small real run.

Every page is opened on the run, its main widgets are driven, and what it shows
is checked against the run's artifacts. Damaged runs, an empty runs root and
bad uploads must give messages, never exceptions.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import torch
from helpers.apptest_support import PAGES, assert_clean, frame_with, metric, open_app, plotly_keys, texts
from helpers.dashboard_support import RUN, TWIN, damaged_runs_root, small_runs_root
from PIL import Image

from dashboard import run_view
from dashboard.viewmodels import health, targets
from spg_core import demo, run_paths, thresholds, uploads
from spg_core.atomic import write_json
from spg_core.atoms import Ablator, attribute, load_atoms, rank_atoms
from spg_core.atoms import kinds as kinds_module
from spg_core.atoms.region import ImageAtoms, box_patches, cell_patches, mask_patches, rank_region, region_atoms
from spg_core.cli import build_parser, main
from spg_core.errors import SPGError
from spg_core.guides import GuideSet
from spg_core.inference import Predictor
from spg_core.launch import app_env, streamlit_command
from spg_core.report import METRIC_TITLES
from spg_core.runs import THRESHOLD_FILE, RunDir
from spg_core.store import TokenStore
from spg_core.thresholds import best_f1_threshold, ensure_run_threshold, read_run_threshold

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    return small_runs_root(tmp_path_factory)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# -- launcher and view models ----------------------------------------------------------------------


def test_launcher_command_is_headless_without_usage_stats():
    cmd = streamlit_command(8765)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert "--server.headless=true" in cmd and "--browser.gatherUsageStats=false" in cmd
    assert "--server.port=8765" in cmd
    env = app_env("some/runs")
    assert Path(env[run_paths.RUNS_ENV]).is_absolute()


def test_cli_registers_dashboard_command():
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


def test_region_ranking_from_an_images_codes_and_contributions():
    """A region is ranked from one image's precomputed codes and net contributions (atoms.region.ImageAtoms)."""
    grid = (4, 4)
    region = cell_patches((0, 1), (0, 1), grid)  # the top-left 2 x 2 cells
    codes = torch.zeros(16, 3)
    codes[:, 0] = 1.0  # atom 0: the same everywhere
    codes[torch.as_tensor(region), 1] = 2.0  # atom 1: only inside the region
    codes[~torch.as_tensor(region), 2] = 0.5  # atom 2: only outside
    net = torch.zeros(16, 2)
    net[torch.as_tensor(region), 0] = 0.3  # atom 7 pushes the region to 'anomalous'
    net[:, 1] = -0.1  # atom 9 pulls everywhere to 'normal'
    found = ImageAtoms(codes, torch.tensor([7, 9]), net, frozenset({7}), frozenset({9}))
    ranked = rank_region(found, region, k=3)
    assert ranked.patches == 4
    assert [r["atom"] for r in ranked.activation] == [1, 0]  # 2 never fires inside: left out
    assert ranked.activation[0]["inside"] == pytest.approx(2.0) and ranked.activation[1]["outside"] == 1.0
    assert ranked.contribution == [{"atom": 7, "guide": "anomaly", "contribution": pytest.approx(0.3)}]
    with pytest.raises(SPGError, match="no patch"):
        rank_region(found, cell_patches((0, 0), (0, 0), grid) & False)


# -- pages on the small run ------------------------------------------------------------------------


def test_empty_root_says_how_to_make_a_run(tmp_path, monkeypatch):
    at = open_app(tmp_path, monkeypatch)
    for page in ("runs.py", "maps.py", "atoms.py", "dictionary.py", "atom_detail.py", "backbones.py", "try_image.py"):
        at.switch_page(str(PAGES / page)).run()
        assert_clean(at)
        said = texts(at)
        assert "No runs yet" in said and "spg dashboard --demo" in said, page


@pytest.mark.slow
def test_runs_page(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, run=RUN)
    assert at.title[0].value == "Runs"
    assert set(at.selectbox(key="run").options) == {RUN, TWIN}
    metrics = RunDir(runs_root / RUN).read_metrics()
    assert metric(at, "Image AUROC") == f"{100 * metrics['mean']['image_auroc']:.1f}%"
    overview = frame_with(at, "run", "status")
    assert set(overview["run"]) == {RUN, TWIN} and set(overview["status"]) == {"complete"}
    table = frame_with(
        at, METRIC_TITLES["image_auroc"], METRIC_TITLES["aupro"], METRIC_TITLES["aupro_official"], without=("run",)
    )
    assert list(table.index) == sorted(metrics["per_category"]) + ["mean"]
    assert "No row of the paper matches" in texts(at)  # synthetic runs have no paper row
    settings = frame_with(at, "setting", "value")
    assert "aux" in settings["setting"].tolist()  # configuration is shown

    # The sweep folder under the root is listed and drawn from its sweep.csv.
    assert at.selectbox(key="sweep_pick").value == "sweeps/width-k"
    assert plotly_keys(at) >= 1 + 2  # metrics chart + width/k and aggregation figures

    at.selectbox(key="run").set_value(TWIN).run()
    assert_clean(at)
    assert at.subheader[0].value == f"Run {TWIN}"
    assert plotly_keys(at) == 1 + 2 + 2  # + the twin's own sweep (RUN/sweep)


@pytest.mark.slow
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

    # The slider opens on the threshold chosen on the auxiliary set (recorded in RUN/threshold.json),
    # and says so; the target's own best-F1 threshold appears only as the labelled oracle.

    record = read_run_threshold(runs_root / RUN)
    slider = at.slider(key=k + "threshold")
    assert slider.value == pytest.approx(record["image"]["threshold"], abs=slider.step)
    said = texts(at)
    assert "chosen on the auxiliary set" in said and "by **auxiliary 5% FPR**" in said
    oracle = best_f1_threshold([r["score"] for r in rows], [r["label"] for r in rows])
    assert (
        f"Oracle line, for reference only: the target's own best-F1 threshold is {targets.format_score(oracle)}" in said
    )
    assert "99.9th percentile of auxiliary normal pixels" in said  # the map's legend

    # Threshold above every score: nothing is called anomalous, every anomalous image is a false negative.
    top = max(r["score"] for r in rows)
    assert slider.min <= min(r["score"] for r in rows) and slider.max >= top
    at.slider(key=k + "threshold").set_value(slider.max).run()
    at.selectbox(key=k + "category").set_value("all").run()
    at.selectbox(key=k + "defect").set_value("all").run()
    at.selectbox(key=k + "outcome").set_value("false negatives").run()
    assert_clean(at)
    n_anomalous = sum(r["label"] for r in rows if r["score"] < slider.max)
    assert at.selectbox(key=k + "image").label == f"Image ({n_anomalous} shown)"
    # Threshold at the lowest score: every image is called anomalous, so every good one is a false positive
    # and none is a true negative.
    at.slider(key=k + "threshold").set_value(slider.min).run()
    at.selectbox(key=k + "outcome").set_value("false positives").run()
    assert at.selectbox(key=k + "image").label == f"Image ({sum(1 - r['label'] for r in rows)} shown)"
    at.selectbox(key=k + "outcome").set_value("true negatives").run()
    assert "No image matches" in texts(at)
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
    assert plotly_keys(at) >= 2  # the map and the atom contributions

    # Open one of the patch's atoms on the Atom detail page.
    atom = at.selectbox(key=k + "open_atom").value
    at.button(key=k + "open").click().run()
    assert_clean(at)
    assert at.title[0].value == "Atom detail"
    assert at.selectbox(key=f"{RUN}::atom::pick").value == atom


@pytest.mark.slow
def test_atoms_page_ranks_and_opens_an_atom(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="atoms.py", run=RUN)
    pair, _ = GuideSet.load(str(runs_root / RUN / "guides.safetensors"))
    _, stats = load_atoms(runs_root / RUN)
    dead = set(stats.loc[stats["tag"] == "dead", "atom"].astype(int))
    ranking = {g: [a for a in entries if a["atom"] not in dead] for g, entries in rank_atoms(pair).items()}
    assert metric(at, "Active anomaly atoms") == str(len(ranking["anomaly"]))
    assert metric(at, "Active normal atoms") == str(len(ranking["normal"]))
    k = f"{RUN}::atoms::"
    table = frame_with(at, "guide", "rank", "atom", "share", "tag", "frequency")
    assert len(table) == len(ranking["anomaly"]) + len(ranking["normal"])
    assert not set(table["atom"]) & dead and "dead" not in set(table["tag"])
    assert not table.map(lambda v: v is None).any().any()  # no cell says None

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


@pytest.mark.slow
def test_atom_detail_tiles_histograms_and_ablation(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="atom_detail.py", run=RUN)
    k = f"{RUN}::atom::"
    # The page opens on the anomaly guide's top live atom, and offers no dead one.

    _, stats = load_atoms(runs_root / RUN)
    dead = set(stats.loc[stats["tag"] == "dead", "atom"].astype(int))
    pair, _ = GuideSet.load(str(runs_root / RUN / "guides.safetensors"))
    top_live = next(a["atom"] for a in rank_atoms(pair)["anomaly"] if a["atom"] not in dead)
    assert at.selectbox(key=k + "pick").value == top_live
    offered = {int(o.split()[0][1:]) for o in at.selectbox(key=k + "pick").options}
    assert offered and not offered & dead
    atom = top_live
    at.selectbox(key=k + "pick").set_value(atom).run()

    def top_images() -> int:  # the top patches' crop + heatmap pairs carry no caption of their own
        return sum(1 for i in at.image if i.proto.imgs and not i.proto.imgs[0].caption)

    assert top_images() == 2 * 6
    assert plotly_keys(at) == 3  # category and activation histograms, grid positions
    assert any(f'spg-pill neutral">{tag}<' in texts(at) for tag in ("class-general", "class-specific", "shared"))
    at.select_slider(key=k + "count").set_value(3).run()
    assert top_images() == 2 * 3

    at.select_slider(key=k + f"scale_{atom}_anomaly").set_value(0.0).run()
    assert_clean(at)
    expected = Ablator(runs_root / RUN, device="cpu").ablate(remove=[atom], guide="anomaly").metrics
    assert metric(at, "Image AUROC") == f"{100 * expected['mean']['image_auroc']:.1f}%"
    assert len(frame_with(at, "category", "before", "after", "change"))
    assert plotly_keys(at) == 6  # + the maps as trained, edited, and their difference

    at.select_slider(key=k + f"scale_{atom}_anomaly").set_value(1.0).run()
    assert "Move the slider" in texts(at)


@pytest.mark.slow
def test_backbones_page_compares_two_runs(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="backbones.py", run=RUN)
    assert sorted(at.multiselect(key="bb_runs").value) == sorted([RUN, TWIN])
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) == 3  # two maps + grouped metric bars
    scores = {m.label: m.value for m in at.metric}
    shown = at.selectbox(key="bb_image").value
    for name in (RUN, TWIN):  # each card holds its own run's stored score
        row = next(r for r in RunDir(runs_root / name).read_scores() if r["image_path"] == shown)
        assert scores[name] == f"score {targets.format_score(row['score'])}"
    category = at.selectbox(key="bb_category").options[-1]
    at.selectbox(key="bb_category").set_value(category).run()
    at.segmented_control(key="bb_metric").set_value("Pixel AUROC").run()
    assert_clean(at)
    at.multiselect(key="bb_runs").set_value([RUN]).run()
    assert "at least two runs" in texts(at)


@pytest.mark.slow
def test_try_an_image_scores_uploads_and_refuses_bad_files(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="try_image.py", run=RUN)
    assert "Upload one or more images" in texts(at)
    rows = RunDir(runs_root / RUN).read_scores()
    row = next(r for r in rows if r["label"] == 1)
    real = Path(row["image_path"]).read_bytes()
    at.file_uploader(key="uploads").set_value(
        [
            ("target.png", real, "image/png"),
            ("notes.txt", b"not an image", "text/plain"),
            ("broken.png", real[:500], "image/png"),
            ("huge.png", real + b"\0" * (uploads.MAX_UPLOAD_BYTES + 1), "image/png"),
        ]
    ).run()
    assert_clean(at)
    # The upload goes through the same decoding and backbone as the stored target tokens.
    assert float(metric(at, "Image score")) == pytest.approx(row["score"], abs=0.02, rel=0.05)
    errors = "\n".join(e.value for e in at.error)
    assert "notes.txt was refused" in errors and "not accepted" in errors
    assert "broken.png was refused" in errors and "corrupt" in errors
    assert "huge.png was refused" in errors and "limit" in errors
    assert plotly_keys(at) == 2  # map + top atoms for the one good image

    # Without an upload, a sample from the target set can be scored instead.
    at.file_uploader(key="uploads").set_value(None).run()
    first_anomalous = next(r["image_path"] for r in rows if r["label"])
    at.selectbox(key="try_sample").set_value(first_anomalous).run()
    assert_clean(at)
    assert not at.error
    sample_row = next(r for r in rows if r["image_path"] == first_anomalous)
    assert float(metric(at, "Image score")) == pytest.approx(sample_row["score"], abs=0.02, rel=0.05)

    # Region -> atoms on the scored image: the tables are the engine's answer for the new image's tokens.

    name = Path(first_anomalous).name
    next(s for s in at.slider if s.label == "Region rows").set_value((4, 8)).run()
    next(s for s in at.slider if s.label == "Region columns").set_value((10, 14)).run()
    assert_clean(at)
    assert "Region: rows 4-8, columns 10-14 (25 patches)" in texts(at)
    pred = Predictor(runs_root / RUN, device="cpu")
    out = pred.predict_images([uploads.decode_upload(name, Path(first_anomalous).read_bytes())])
    attr = attribute(out["tokens"], pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    expected = region_atoms(pred.sae, out["tokens"][0], attr, cell_patches((4, 8), (10, 14), pred.scorer.grid))
    assert frame_with(at, "atom", "inside", "outside")["atom"].tolist() == [r["atom"] for r in expected.activation]


@pytest.mark.slow
def test_models_are_shared_between_sessions(runs_root, monkeypatch):
    """st.cache_resource: a second browser session re-uses the first one's Predictor."""
    st.cache_data.clear()
    st.cache_resource.clear()
    built = []
    original = Predictor

    class Counting(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            built.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(run_view, "Predictor", Counting)  # the name RunView.predictor calls
    for _ in range(2):
        open_app(runs_root, monkeypatch, page="atoms.py", run=RUN)
    assert len(built) == 1


# -- damaged runs ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def damaged_root(runs_root, tmp_path_factory) -> Path:
    return damaged_runs_root(tmp_path_factory.mktemp("damaged"), runs_root / RUN)


DAMAGE = {
    "truncated": ("guides truncated", "truncated or not a safetensors"),
    "corrupt": ("not valid JSON", "metrics"),
    "half": ("missing",),
}


@pytest.mark.slow
@pytest.mark.parametrize("page", ["runs.py", "maps.py", "atoms.py", "dictionary.py", "atom_detail.py", "try_image.py"])
@pytest.mark.parametrize("run", ["truncated", "corrupt", "half"])
def test_damaged_runs_give_messages_not_exceptions(damaged_root, monkeypatch, page, run):
    at = open_app(damaged_root, monkeypatch, page=page, run=run)
    # An error or warning (not the info boxes every page shows) that names what is damaged.
    said = "\n".join(str(a.value) for a in (*at.error, *at.warning))
    assert any(word in said for word in DAMAGE[run]), f"{page} on {run} said nothing about the damage: {said!r}"
    # The rest of the app keeps working: switch to the good run on the same page.
    at.selectbox(key="run").set_value("good").run()
    assert_clean(at)
    assert not at.error


@pytest.mark.slow
def test_damaged_run_states(damaged_root, monkeypatch):
    at = open_app(damaged_root, monkeypatch)
    overview = frame_with(at, "run", "status")
    status = dict(zip(overview["run"], overview["status"]))
    assert status["good"] == "complete" and status["half"] == "training"
    at.selectbox(key="run").set_value("corrupt").run()
    assert "not valid JSON" in texts(at)
    at.selectbox(key="run").set_value("half").run()
    assert "incomplete or damaged" in texts(at)


@pytest.mark.slow
def test_backbones_page_leaves_out_damaged_runs(damaged_root, monkeypatch):
    at = open_app(damaged_root, monkeypatch, page="backbones.py", run="good")
    at.multiselect(key="bb_runs").set_value(["good", "truncated", "half"]).run()
    assert_clean(at)
    said = texts(at)
    assert "truncated** is left out" in said and "half** is left out" in said
    assert metric(at, "good").startswith("score")


def test_saturated_guides_get_a_note_and_healthy_ones_do_not(tmp_path):
    path = tmp_path / "guides.json"
    assert health.guide_notes(path) == []  # no record: nothing to say
    write_json(path, {"config": {"dice": "image", "epochs": 20}, "aux_fit": {"p_defect_median": 2e-7}})
    (note,) = health.guide_notes(path)
    assert "saturated" in note and "2.0e-07" in note and "--dice batch" in note
    write_json(path, {"config": {"dice": "batch", "epochs": 2}, "aux_fit": {"p_defect_median": 8e-8}})
    (note,) = health.guide_notes(path)
    assert "--dice" not in note and "this run: 2" in note
    write_json(path, {"aux_fit": {"p_defect_median": 1e-2, "patch_auroc": 0.83}})
    assert health.guide_notes(path) == []
    path.write_text("{ truncated")
    assert health.guide_notes(path) == []  # unreadable: the health check reports files, not this


# -- thresholds, region -> atoms, defect kinds, report (engine parts on the small run) ----------------


@pytest.mark.slow
def test_threshold_is_recorded_by_the_pipeline_and_recomputed_for_runs_without_it(runs_root, tmp_path):
    recorded = read_run_threshold(runs_root / RUN)
    assert recorded is not None and recorded["source"] == "auxiliary set"
    image = recorded["image"]
    assert image["rule"] == "aux_fpr" and image["threshold"] == image["aux_fpr"]["threshold"]
    assert image["aux_fpr"]["fpr"] <= image["aux_fpr"]["fpr_target"]
    scale = recorded["pixel_scale"]
    assert scale["space"] == "logit" and scale["vmin"] < scale["vmax"]
    old = tmp_path / "old-run"  # a run from before threshold.json existed
    shutil.copytree(runs_root / RUN, old)
    (old / THRESHOLD_FILE).unlink()
    again = ensure_run_threshold(old)
    assert (old / THRESHOLD_FILE).is_file()
    assert again["image"]["threshold"] == pytest.approx(image["threshold"], rel=1e-6)
    assert again["pixel_scale"]["vmax"] == pytest.approx(scale["vmax"], rel=1e-6)


def _aux_defect_image(runs_root):
    """(store, index, mask [S, S]) of the auxiliary image with the largest defect mask."""
    store = TokenStore(RunDir(runs_root / RUN).read_config()["aux_store"])
    anomalous = [i for i, r in enumerate(store.images) if r["label"]]
    areas = store.masks(anomalous).sum(dim=(1, 2))
    index = anomalous[int(areas.argmax())]
    return store, index, store.masks([index])[0].numpy() > 0.5


@pytest.mark.slow
def test_a_box_over_a_defect_finds_atoms_that_fire_there_more_than_on_good_surface(runs_root):
    pred = Predictor(runs_root / RUN, device="cpu")
    store, index, mask = _aux_defect_image(runs_root)
    ys, xs = np.nonzero(mask)
    defect_box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    _h, w = store.grid
    cell = store.image_size / w
    width, height = defect_box[2] - defect_box[0], defect_box[3] - defect_box[1]
    # The same-size box on good surface: the corner farthest from the defect, with no mask pixel in it.
    good_box = None
    for x0, y0 in (
        (0, 0),
        (store.image_size - width, 0),
        (0, store.image_size - height),
        (store.image_size - width, store.image_size - height),
    ):
        box = (x0, y0, x0 + width, y0 + height)
        if not (box_patches(box, store.grid, store.image_size) & mask_patches(mask, store.grid)).any():
            good_box = box
            break
    assert good_box is not None, "the defect covers every corner"
    tokens = store.tokens([index])
    attr = attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    inside = region_atoms(pred.sae, tokens[0], attr, box_patches(defect_box, store.grid, store.image_size))
    good = region_atoms(pred.sae, tokens[0], attr, box_patches(good_box, store.grid, store.image_size))
    assert inside.activation and inside.contribution
    codes = pred.sae.encode_dense(tokens[0]).detach().numpy()  # [N, M]
    on_good = box_patches(good_box, store.grid, store.image_size)
    top = [row["atom"] for row in inside.activation[:3]]
    for atom, row in zip(top, inside.activation):
        assert row["inside"] > codes[on_good, atom].mean(), atom  # fires more on the defect than on good surface
    # The defect box is pushed towards 'anomalous' more than the good one (sum of the top shares).
    assert sum(r["contribution"] for r in inside.contribution) > sum(r["contribution"] for r in good.contribution)
    assert cell > 0 and inside.patches == int(box_patches(defect_box, store.grid, store.image_size).sum())


@pytest.mark.slow
def test_atom_kind_map_counts_in_mask_activation_and_is_cached(runs_root, tmp_path, monkeypatch):
    run = tmp_path / "kinds-run"
    shutil.copytree(runs_root / RUN, run)
    pred = Predictor(run, device="cpu")
    store = TokenStore(pred.config_json["aux_store"])

    _, stats = load_atoms(run)
    live = stats[stats["tag"] != "dead"].sort_values("selectivity", ascending=False)["atom"].astype(int)
    atoms = sorted(live.head(3).tolist())  # atoms that fire inside defects, so the map has mass
    km = kinds_module.run_kind_map(run, pred.sae, store, atoms)
    assert km.mean.max() > 0
    assert km.mean.shape == (3, len(km.kinds)) and (run / kinds_module.KINDS_JSON).is_file()
    # One cell by hand: the second atom in the first kind, summed over in-mask patches of that kind's images.
    kind = km.kinds[0]
    total, count = 0.0, 0
    for i, r in enumerate(store.images):
        if r["label"] and (r["category"], r["defect"]) == kind:
            inside = mask_patches(store.masks([i])[0].numpy() > 0.5, store.grid)
            codes = pred.sae.encode_dense(store.tokens([i])[0]).detach().numpy()
            total += codes[inside, atoms[1]].sum()
            count += int(inside.sum())
    assert km.mean[1, 0] == pytest.approx(total / count, rel=1e-4, abs=1e-6)
    # The strongest cell's patches lie inside that kind's masks and are ordered.
    j, k = np.unravel_index(np.argmax(km.mean), km.mean.shape)
    found = kinds_module.kind_patches(pred.sae, store, int(km.atoms[j]), km.kinds[k], count=5)
    assert found and [e["value"] for e in found] == sorted((e["value"] for e in found), reverse=True)
    for e in found:
        assert (store.images[e["image"]]["category"], store.images[e["image"]]["defect"]) == km.kinds[k]
        assert mask_patches(store.masks([e["image"]])[0].numpy() > 0.5, store.grid)[e["patch"]]
    # Second call: read from RUN/atoms/kinds.*, not recomputed.
    monkeypatch.setattr(kinds_module, "kind_map", lambda *a, **k: pytest.fail("recomputed"))
    again = kinds_module.run_kind_map(run, pred.sae, store, [atoms[1]])
    assert again.atoms.tolist() == [atoms[1]] and np.allclose(again.mean[0], km.mean[1])


@pytest.mark.slow
def test_report_holds_every_section_with_inlined_pictures(runs_root, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", "--run", str(runs_root / RUN), "--out", str(out)]) == 0
    text = out.read_text()
    for section in ("summary", "threshold", "metrics", "errors", "atoms"):
        assert f'<section id="{section}">' in text, section
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) >= 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing to fetch
    assert "Oracle line" in text and "chosen on the auxiliary set" in text


# -- new interactions under AppTest ----------------------------------------------------------------


@pytest.mark.slow
def test_region_on_the_maps_page_lists_the_engines_atoms(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="maps.py", run=RUN)
    k = f"{RUN}::"
    at.selectbox(key=k + "outcome").set_value("all images").run()
    at.selectbox(key=k + "image").set_value(0).run()  # the first target image (the page opens on a true positive)
    index = at.selectbox(key=k + "image").value
    at.slider(key=k + "region::rows").set_value((2, 6)).run()
    at.slider(key=k + "region::cols").set_value((3, 9)).run()
    assert_clean(at)
    assert "Region: rows 2-6, columns 3-9 (35 patches)" in texts(at)
    pred = Predictor(runs_root / RUN, device="cpu")
    store = TokenStore(RunDir(runs_root / RUN).read_config()["target_store"])
    tokens = store.tokens([index])
    attr = attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    expected = region_atoms(pred.sae, tokens[0], attr, cell_patches((2, 6), (3, 9), store.grid))
    act = frame_with(at, "atom", "inside", "outside")
    assert act["atom"].tolist() == [r["atom"] for r in expected.activation]
    con = frame_with(at, "atom", "guide", "contribution")
    assert con["atom"].tolist() == [r["atom"] for r in expected.contribution]
    # One click from an atom of the region to its top auxiliary patches (a crop per patch): an atom that
    # fires inside the region is live, so it has top patches in the index.

    atom = int(act["atom"].iloc[0])
    before = len(at.image)
    at.selectbox(key=k + "region::atom").set_value(atom).run()
    assert_clean(at)
    index, _ = load_atoms(runs_root / RUN)
    tiles = [
        i
        for i in at.image
        if i.proto.imgs
        and i.proto.imgs[0].caption.endswith(tuple(f"s={e['value']:.2f}" for e in index.entries(atom)[:6]))
    ]
    assert len(tiles) == min(6, len(index.entries(atom))) and len(at.image) >= before - 6


def _cell_box(cells):
    """((row0, row1), (col0, col1)) bounding the True cells of a `[h, w]` bool grid."""
    rows, cols = np.nonzero(cells)
    return (int(rows.min()), int(rows.max())), (int(cols.min()), int(cols.max()))


def _shown_region(at: AppTest, rows, cols):
    """Set the auxiliary view's region sliders; returns the shown (activation, contribution) tables."""
    k = f"{RUN}::aux::region::"
    at.slider(key=k + "rows").set_value(rows).run()
    at.slider(key=k + "cols").set_value(cols).run()
    assert_clean(at)
    said = texts(at)
    assert f"Region: rows {rows[0]}-{rows[1]}, columns {cols[0]}-{cols[1]}" in said
    tables = []
    for columns, empty in (
        (("atom", "inside", "outside"), "No atom fires inside this region."),
        (("atom", "guide", "contribution"), "No atom pushes this region towards 'anomalous'."),
    ):
        try:
            tables.append(frame_with(at, *columns))
        except AssertionError:  # an empty ranking is said in words, not shown as an empty table
            assert empty in said, columns
            tables.append(pd.DataFrame(columns=list(columns)))
    return tuple(tables)


def _best_excess(act) -> float:
    """The largest 'mean activation inside' minus 'elsewhere' of a shown activation table (0 when empty)."""
    return float((act["inside"] - act["outside"]).max()) if len(act) else 0.0


@pytest.mark.slow
def test_region_on_an_auxiliary_defect_shows_atoms_that_fire_there_more_than_on_good_surface(runs_root, monkeypatch):
    store, index, mask = _aux_defect_image(runs_root)
    h, w = store.grid
    s = store.image_size
    coverage = mask.reshape(h, s // h, w, s // w).mean(axis=(1, 3))  # [h, w] defect share per cell
    defect = _cell_box(coverage >= 0.5)  # cells at least half defect: inside the mask
    size = (defect[0][1] - defect[0][0], defect[1][1] - defect[1][0])
    good = None  # the same-size box with no mask pixel in it
    for r0, c0 in ((0, 0), (0, w - 1 - size[1]), (h - 1 - size[0], 0), (h - 1 - size[0], w - 1 - size[1])):
        box = (r0, r0 + size[0]), (c0, c0 + size[1])
        if not coverage[box[0][0] : box[0][1] + 1, box[1][0] : box[1][1] + 1].any():
            good = box
            break
    assert good is not None, "the defect reaches every corner"

    at = open_app(runs_root, monkeypatch, page="maps.py", run=RUN)
    at.segmented_control(key=f"{RUN}::source").set_value("auxiliary set").run()
    at.selectbox(key=f"{RUN}::aux::image").set_value(index).run()
    assert_clean(at)
    record = store.images[index]
    name = f"{Path(record['image_path']).parent.name}/{Path(record['image_path']).name}"
    assert "Auxiliary image and ground truth" in texts(at)
    assert any(i.proto.imgs and i.proto.imgs[0].caption == f"{name}: defect mask outlined in green" for i in at.image)
    act_defect, con_defect = _shown_region(at, *defect)
    act_good, con_good = _shown_region(at, *good)

    # What is shown is the engine's answer for this auxiliary image (not a target image's).
    pred = Predictor(runs_root / RUN, device="cpu")
    tokens = store.tokens([index])
    attr = attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    expected = region_atoms(pred.sae, tokens[0], attr, cell_patches(*defect, store.grid))
    assert act_defect["atom"].tolist() == [r["atom"] for r in expected.activation]
    # The atoms shown for the defect fire more inside it than on the good box of the same image.
    codes = pred.sae.encode_dense(tokens[0]).detach().numpy()  # [N, M]
    on_good = cell_patches(*good, store.grid)
    for atom, inside in zip(act_defect["atom"][:3], act_defect["inside"][:3]):
        assert inside > codes[on_good, int(atom)].mean(), atom
    # From the tables alone: the defect box's best atom stands out from the rest of the image more than
    # the good box's best does, and the defect box is pushed towards 'anomalous' more.
    assert _best_excess(act_defect) > _best_excess(act_good)
    assert con_defect["contribution"].sum() > con_good["contribution"].sum()


@pytest.mark.slow
def test_an_atoms_top_patch_opens_its_auxiliary_image_in_the_region_view(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="atom_detail.py", run=RUN)
    k = f"{RUN}::atom::"
    atom = at.selectbox(key=k + "pick").value
    index, _ = load_atoms(runs_root / RUN)
    entry = index.entries(atom)[1]  # the atom's second strongest auxiliary patch
    at.selectbox(key=k + f"region_pick_{atom}").set_value(1).run()
    at.button(key=k + "open_region").click().run()
    assert_clean(at)
    assert "Auxiliary image and ground truth" in texts(at)  # the Maps page's auxiliary view
    assert at.selectbox(key=f"{RUN}::aux::image").value == entry["image"]
    h, w = index.meta["grid"]
    r, c = divmod(entry["patch"], w)
    rows, cols = (max(r - 1, 0), min(r + 1, h - 1)), (max(c - 1, 0), min(c + 1, w - 1))
    assert f"Region: rows {rows[0]}-{rows[1]}, columns {cols[0]}-{cols[1]}" in texts(at)
    # The region's tables are the engine's answer there, and the atom fires inside it (it is a top patch).
    pred = Predictor(runs_root / RUN, device="cpu")
    store = TokenStore(pred.config_json["aux_store"])
    tokens = store.tokens([entry["image"]])
    attr = attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    expected = region_atoms(pred.sae, tokens[0], attr, cell_patches(rows, cols, store.grid))
    act = frame_with(at, "atom", "inside", "outside")
    assert act["atom"].tolist() == [e["atom"] for e in expected.activation]
    codes = pred.sae.encode_dense(tokens[0]).detach().numpy()
    assert codes[cell_patches(rows, cols, store.grid), atom].mean() > 0


@pytest.mark.slow
def test_atoms_page_kind_heatmap_opens_a_cells_patches(runs_root, monkeypatch):
    at = open_app(runs_root, monkeypatch, page="atoms.py", run=RUN)
    k = f"{RUN}::atoms::"
    table = frame_with(at, "atom", "categories", "top_kind")
    assert 1 <= len(table) <= 30 and table["categories"].min() >= 0  # the most relevant 30 at most
    assert plotly_keys(at) == 3  # two bar charts + the heatmap
    spans = table["categories"].tolist()
    # Sorted as the caption says: by categories spanned, class-general (most categories) first.
    assert spans == sorted(spans, reverse=True) and "class-general first" in texts(at)
    heat = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert heat["layout"]["yaxis"]["title"]["text"] and heat["layout"]["xaxis"]["title"]["text"]  # both labelled
    assert heat["data"][0]["y"] == [f"#{a}" + (f" {t}" if t else "") for a, t in zip(table["atom"], table["tag"])]
    at.segmented_control(key=k + "kind_sort").set_value("atom id").run()
    assert frame_with(at, "atom", "categories", "top_kind")["atom"].tolist() == sorted(table["atom"])
    atom = int(table.iloc[0]["atom"])
    kind = table.iloc[0]["top_kind"]
    at.selectbox(key=k + "kind_atom").set_value(atom).run()
    at.selectbox(key=k + "kind_kind").set_value(kind).run()
    assert_clean(at)
    captions = [c for i in at.image for c in ([i.proto.imgs[0].caption] if i.proto.imgs else [])]
    category, defect = kind.split(" / ")
    assert captions and all(c.startswith(f"{category} · {defect}") for c in captions)


@pytest.mark.slow
def test_runs_page_writes_the_report(runs_root, monkeypatch, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(runs_root / RUN, root / RUN)
    at = open_app(root, monkeypatch, run=RUN)
    at.button(key="report_make").click().run()
    assert_clean(at)
    assert (root / RUN / "report.html").is_file()
    assert at.get("download_button"), "no download button after writing the report"


@pytest.mark.slow
def test_one_run_backbones_page_shows_it_and_the_demo_progress(runs_root, monkeypatch, tmp_path):
    root = tmp_path / "one"
    shutil.copytree(runs_root / RUN, root / RUN)

    demo._report(root, "demo-effnet", "done")  # the progress file as the demo builder writes it
    demo._report(root, "demo-builtin", "scoring the target")  # ... by this (live) process
    at = open_app(root, monkeypatch, page="backbones.py", run=RUN)
    said = texts(at)
    assert "at least two runs" in said and "shown alone" in said
    assert plotly_keys(at) == 1  # the one run's per-category bars
    bars = at.get("progress")
    assert bars and bars[0].proto.value == 50 and "demo-builtin: scoring the target (step 3 of 4" in bars[0].proto.text
    assert not at.warning

    demo._report(root, "demo-builtin", "done")  # every demo run built: no note at all
    at = open_app(root, monkeypatch, page="backbones.py", run=RUN)
    assert not at.get("progress") and "demo run" not in texts(at)

    progress = json.loads((root / demo.PROGRESS_FILE).read_text())
    progress["demo-builtin"].update(stage="training", pid=2**22 + 1)  # a builder that is gone
    (root / demo.PROGRESS_FILE).write_text(json.dumps(progress))
    at = open_app(root, monkeypatch, page="backbones.py", run=RUN)
    assert "run `spg dashboard --demo` again" in at.warning[0].value
