"""End to end, no network: `spg run` both directions on the synthetic groups with the builtin backbone.

This is the acceptance test of the engine: the figures below are asserted, not
just computed. It also exercises the run directory, reports, predict and the
stage-by-stage commands on the same runs.
"""

import csv
import json
from pathlib import Path

import pytest
import torch

from spg_core.backbones.builtin import BuiltinBackbone
from spg_core.cli import main
from spg_core.protocols import overrides
from spg_core.runs import RunDir
from spg_core.sae import TopKSAE

pytestmark = pytest.mark.slow  # every test here reads `runs`: builtin runs both ways on the full synthetic groups


def _preset_args() -> list[str]:
    """The builtin preset, named (it is also builtin's default), on the CPU."""
    return ["--backbone", "builtin", "--preset", "builtin", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for aux, target in (("synthetic-a", "synthetic-b"), ("synthetic-b", "synthetic-a")):
        run = root / f"{aux}_to_{target}"
        assert main(["run", "--aux", aux, "--target", target, "--out", str(run), *_preset_args()]) == 0
        out[(aux, target)] = run
    return out


# builtin-v6 with the builtin preset measured image AUROC 0.938 (a -> b) and 0.857 (b -> a) on
# 2026-11-23; training seed 1 gave 0.935 / 0.866, so a training seed moves it by up to 0.009.
# These are development figures (builtin was tuned on these sets, docs/builtin_lab_notes.md) and
# builtin's joint channel alone, with no training, scores 0.860 on synthetic-a: the bars below
# check that the pipeline works end to end, not that SPG adds anything (benchmarks/RESULTS.md).
# Each bar sits about 0.06 below its figure, six times the training-seed spread, so that another
# torch build or CPU, which changes float rounding in training, does not fail it.
DIRECTIONS = [("synthetic-a", "synthetic-b"), ("synthetic-b", "synthetic-a")]
IMAGE_BAR = {("synthetic-a", "synthetic-b"): 0.88, ("synthetic-b", "synthetic-a"): 0.80}


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_zero_shot_segmentation_reaches_the_pixel_bar(runs, direction):
    """Measured 0.975 (a -> b) and 0.969 (b -> a) pixel AUROC, on categories never seen in training;
    bar 0.90, 0.07 below the lower figure."""
    metrics = json.loads((runs[direction] / "metrics.json").read_text())
    assert metrics["mean"]["pixel_auroc"] >= 0.90, metrics
    # Unseen categories only: the target's categories are disjoint from the auxiliary set's.
    cfg = json.loads((runs[direction] / "config.json").read_text())
    aux_cats = {r["category"] for r in json.loads((Path(cfg["aux_store"]) / "manifest.json").read_text())["images"]}
    assert not aux_cats & set(metrics["per_category"])
    for m in metrics["per_category"].values():
        assert all(0.0 <= m[k] <= 1.0 for k in ("image_auroc", "image_ap", "pixel_auroc", "aupro"))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_zero_shot_detection_reaches_the_image_bar(runs, direction):
    """Measured 0.938 (a -> b) / 0.857 (b -> a); bars 0.88 / 0.80 (see IMAGE_BAR)."""
    metrics = json.loads((runs[direction] / "metrics.json").read_text())
    assert metrics["mean"]["image_auroc"] >= IMAGE_BAR[direction], metrics


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_segmentation_covers_defect_regions(runs, direction):
    """AUPRO weighs every defect region alike, so small defects count as much as large ones
    (measured 0.932 / 0.847; another training seed moved it by 0.001). Bar 0.78: 0.067 below
    the lower figure, as for the image bar."""
    metrics = json.loads((runs[direction] / "metrics.json").read_text())
    assert metrics["mean"]["aupro"] >= 0.78, metrics


def test_run_directory_contents(runs):
    run = RunDir(runs[("synthetic-a", "synthetic-b")])
    for name in (
        "config.json",
        "sae.safetensors",
        "sae.json",
        "guides.safetensors",
        "guides.json",
        "target/patch_maps.safetensors",
        "target/scores.csv",
        "metrics.json",
        "per_category.csv",
        "report.md",
    ):
        assert run.exists(name), name
    cfg = run.read_config()
    assert cfg["sae"]["width"] == overrides("builtin")["sae"]["width"]
    assert cfg["backbone_identity"]["backbone"] == "builtin"
    probs, scores, _meta = run.read_target()
    rows = run.read_scores()
    assert probs.shape[0] == scores.shape[0] == len(rows)
    assert torch.allclose(torch.tensor([r["score"] for r in rows]), scores, atol=1e-5)
    sae_info = json.loads(run.file("sae.json").read_text())
    assert 0.0 <= sae_info["fvu"] < 0.5 and 0.0 <= sae_info["dead_fraction"] <= 1.0
    report = run.file("report.md").read_text()
    assert "## Pixel AUROC" in report and "No row of the paper matches" in report
    with open(run.file("per_category.csv")) as fh:
        table = list(csv.DictReader(fh))
    assert table[-1]["category"] == "mean"
    assert float(table[-1]["pixel_auroc"]) == pytest.approx(run.read_metrics()["mean"]["pixel_auroc"])


def test_predict_writes_maps_and_matches_stored_scores(runs, tmp_path, capsys):
    run = RunDir(runs[("synthetic-a", "synthetic-b")])
    all_rows = run.read_scores()
    stem = Path(all_rows[0]["image_path"]).name  # 000.png is in every defect folder
    rows = [r for r in all_rows if Path(r["image_path"]).name == stem][:3]
    out = tmp_path / "pred"
    assert (
        main(
            ["predict", "--run", str(run.path), *[r["image_path"] for r in rows], "--out", str(out), "--device", "cpu"]
        )
        == 0
    )
    with open(out / "scores.csv") as fh:
        pred = list(csv.DictReader(fh))
    assert len(pred) == 3
    for p, r in zip(pred, rows):
        assert float(p["score"]) == pytest.approx(r["score"], abs=2e-3)  # fp16 token store vs fp32 path
        assert p["image"] == r["image_path"] and Path(p["map"]).is_file()
    assert len({p["map"] for p in pred}) == 3  # namesakes do not overwrite each other


def test_stage_by_stage_commands(runs, tmp_path):
    run = tmp_path / "staged"
    args = _preset_args()
    assert main(["train-sae", "--aux", "synthetic-a", "--out", str(run), *args]) == 0
    assert (run / "sae.safetensors").is_file() and not (run / "guides.safetensors").exists()
    assert main(["train-guides", "--run", str(run), "--guide-epochs", "2", "--quiet", "--device", "cpu"]) == 0
    assert main(["eval", "--run", str(run), "--target", "synthetic-b", "--quiet", "--device", "cpu"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_category"]) == {"brushed", "pill", "plug", "tiles"}


def test_bad_inputs_exit_with_one_clear_message(runs, tmp_path, capsys):
    assert main(["extract", "--dataset", "synthetic-a", "--backbone", "dinov9-huge", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dinov9-huge" in err and "dinov3-vitl16" in err and "Traceback" not in err

    assert main(["extract", "--dataset", f"mvtec:{tmp_path / 'nowhere'}", "--backbone", "builtin", "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err

    # Guides from a run with another dictionary: a clear dimension/width error naming the file.
    run = RunDir(runs[("synthetic-a", "synthetic-b")])
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "guides.safetensors"):
        (other / name).write_bytes(run.file(name).read_bytes())

    # An SAE from another backbone (other token dimension).
    TopKSAE(BuiltinBackbone.dim + 2, 64, 4).save(str(other / "sae.safetensors"))
    assert main(["predict", "--run", str(other), rows_first(run), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "sae.safetensors" in err and f"{BuiltinBackbone.dim}-dim tokens" in err

    # Right dimension, other width: the guides do not belong to this dictionary.
    TopKSAE(BuiltinBackbone.dim, 64, 4).save(str(other / "sae.safetensors"))
    assert main(["predict", "--run", str(other), rows_first(run), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "guides.safetensors" in err and "different SAE or backbone" in err

    # A truncated SAE file.
    data = run.file("sae.safetensors").read_bytes()
    (other / "sae.safetensors").write_bytes(data[:100])
    assert main(["predict", "--run", str(other), rows_first(run), "--out", str(tmp_path / "p")]) == 2
    assert "truncated" in capsys.readouterr().err


def rows_first(run: RunDir) -> str:
    return run.read_scores()[0]["image_path"]
