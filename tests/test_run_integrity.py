"""Run-directory integrity and bad-input handling, on one tiny official-protocol run
(the tiny run of helpers/tiny_data.py on a 6-image folder dataset: seconds on 2 cores)."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers.tiny_data import TINY_RUN_ARGS
from PIL import Image

from dashboard.viewmodels.health import check_run
from spg_core.cli import interrupted_note
from spg_core.cli import main as spg_main
from spg_core.errors import SPGError
from spg_core.images import load_image
from spg_core.runs import METRICS_FILE, PATCH_MAPS_FILE, RunDir

TINY = [*TINY_RUN_ARGS, "--workers", "0"]  # decoding in-process: the folder sets here are 6 images


def _write_folder(root: Path, n_good: int = 3, n_bad: int = 3, size: int = 64, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for sub in ("good", "scratch", "masks/scratch"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "good" / f"{i:03d}.png")
    for i in range(n_bad):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        img[10:30, 5:40] = 0
        Image.fromarray(img).save(root / "scratch" / f"{i:03d}.png")
        mask = np.zeros((size, size), np.uint8)
        mask[10:30, 5:40] = 255
        Image.fromarray(mask).save(root / "masks" / "scratch" / f"{i:03d}_mask.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _write_folder(tmp_path_factory.mktemp("integrity") / "parts")


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity_run") / "run"
    assert spg_main(["run", "--aux", f"folder:{data}", "--target", f"folder:{data}", "--out", str(out), *TINY]) == 0
    return out


def test_official_run_records_protocol_both_aupros_and_provenance(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["protocol"] == "official" and cfg["backbone_identity"]["tokens"] == "official"
    metrics = json.loads((run / METRICS_FILE).read_text())
    assert "aupro" in metrics["mean"] and "aupro_official" in metrics["mean"]
    assert "aupro_official" in metrics["per_category"]["parts"]
    assert metrics["settings"]["smoothing_sigma"] == 4.0 and metrics["settings"]["image_score"] == "smoothed_map"
    assert metrics["provenance"]["guides_sha256"] == RunDir(run).digest("guides.safetensors")
    report = (run / "report.md").read_text()
    assert "Pixel AUPRO (MVTec AD, exact)" in report and "Pixel AUPRO (official" in report
    assert RunDir(run).stale_artifacts() == []


def test_train_guides_keeps_config_and_marks_outputs_stale_until_eval(run, data):
    before = json.loads((run / "config.json").read_text())
    assert (
        spg_main(
            ["train-guides", "--run", str(run), "--guide-epochs", "2", "--device", "cpu", "--quiet", "--workers", "0"]
        )
        == 0
    )
    after = json.loads((run / "config.json").read_text())
    assert set(after) == set(before) and after["target_store"] == before["target_store"]
    assert after["guides"]["epochs"] == 2 and after["guides"]["form"] == "official"
    assert sorted(RunDir(run).stale_artifacts()) == sorted([METRICS_FILE, PATCH_MAPS_FILE])

    assert check_run(run).status == "stale"
    # `spg eval` without --smoothing-sigma uses the run's own (official: 4), and clears the staleness.
    assert spg_main(["eval", "--run", str(run), "--device", "cpu", "--quiet", "--workers", "0"]) == 0
    assert json.loads((run / METRICS_FILE).read_text())["settings"]["smoothing_sigma"] == 4.0
    assert RunDir(run).stale_artifacts() == []


def test_out_naming_a_file_is_a_clear_error(tmp_path, data, capsys):
    path = tmp_path / "a_file"
    path.write_text("x")
    assert spg_main(["run", "--aux", f"folder:{data}", "--target", f"folder:{data}", "--out", str(path), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--out names an existing file" in err and "Traceback" not in err


def test_predict_skip_bad_reports_and_scores_the_rest(run, data, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    good = [str(p) for p in sorted((data / "good").glob("*.png"))]
    out = tmp_path / "pred"
    assert spg_main(["predict", "--run", str(run), str(bad), *good, "--out", str(out), "--device", "cpu"]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert (
        spg_main(["predict", "--run", str(run), str(bad), *good, "--out", str(out), "--device", "cpu", "--skip-bad"])
        == 0
    )
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["image"] for s in skipped] == [str(bad)]
    rows = (out / "scores.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(good)


def test_pixel_limit_refuses_without_pil_warning(data, monkeypatch):
    path = data / "good" / "000.png"  # 64 x 64 = 4096 px
    with pytest.raises(SPGError, match="megapixels"):
        load_image(path, max_pixels=4000)
    # Our limit replaces PIL's: with PIL's own limit below the image, no DecompressionBombWarning leaks.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (64, 64)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_interrupt_note_names_what_is_done_and_not(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "sae.safetensors").write_bytes(b"x")
    note = interrupted_note(argparse.Namespace(command="run", out=str(folder)))
    assert "holds config, SAE" in note and "not done: guides, target maps, metrics" in note
    assert "nothing half-written was left" not in note
