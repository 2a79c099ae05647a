"""`spg import-official` reads the official runs' own Hydra configs: settings filled from them,
contradictions refused with nothing written, non-checkpoints named as such.

Layout as the official code writes it: outputs/DATE/TIME_<method>_<model>/{checkpoints/,
.hydra/config.yaml}. Backbone: dinov2-large-tiny (2 blocks, D = 32, 56 px).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from test_interop import _official_files

from spg_core.cli import main as spg_main

SAE_RUN = "2026-02-03/20-36-06_none_facebook_dinov2-large"
GUIDE_RUN = "2026-02-04/09-15-00_guide_sae_facebook_dinov2-large"
MODEL = {"encoder": "DINO", "id": "facebook/dinov2-large", "image_size": 56, "features_list": [2], "sigma": 4}
SAE = {"name": "layer_2", "hidden_dim": 64, "sparsifier_kind": "topk", "sparsifier_params": {"topk": 8}}


def _layout(root: Path, **guide_sae: object) -> dict[str, Path]:
    """Official run folders with checkpoints (test_interop's tensors) and resolved configs."""
    flat = _official_files(root)
    sae_dir, guide_dir = root / "outputs" / SAE_RUN, root / "outputs" / GUIDE_RUN
    for d in (sae_dir, guide_dir):
        (d / "checkpoints").mkdir(parents=True)
        (d / ".hydra").mkdir()
    files = {
        "sae": flat["sae"].rename(sae_dir / "checkpoints" / "epoch_50.pth"),
        "dead": flat["dead"].rename(sae_dir / "checkpoints" / "dead_atom_mask_layer_2.pt"),
        "guides": flat["guides"].rename(guide_dir / "checkpoints" / "epoch_15.pth"),
    }
    sae_cfg = {
        "seed": 111,
        "cache": {"dir": "${oc.env:HOME}/.cache/features"},  # interpolations stay strings
        "mode": "train_sae",
        "model": {**MODEL, "method": "none"},
        "train": {"epoch": 50, "learning_rate": 0.001, "batch_size": 16},
        "sae": [SAE],
    }
    link = {"datetime": "2026-02-03/20-36-06", "checkpoint_epoch": 50, "sparsity_type": "topk", "guide_topk": 16}
    guide_cfg = {
        "seed": 7,
        "mode": "train",
        "model": {**MODEL, "method": "guide_sae", "method_config": {"guide_sae": {**link, **guide_sae}, "sae": [SAE]}},
        "train": {"epoch": 15, "learning_rate": 0.01, "batch_size": 8, "ema": {"enabled": True, "decay": 0.99}},
    }
    (sae_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(sae_cfg))
    (guide_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(guide_cfg))
    return files


def _argv(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "import-official",
        "--sae-checkpoint",
        str(files["sae"]),
        "--guide-checkpoint",
        str(files["guides"]),
        "--dead-mask",
        str(files["dead"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def test_settings_are_read_from_the_official_configs(tmp_path, capsys):
    files = _layout(tmp_path)
    out = tmp_path / "run"
    assert spg_main(_argv(files, out, "--backbone", "dinov2-large-tiny")) == 0
    assert "cannot be verified" not in capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["sae"]["k"], cfg["sae"]["width"], cfg["sae"]["epochs"], cfg["sae"]["seed"]) == (8, 64, 50, 111)
    guides = cfg["guides"]
    assert (guides["epochs"], guides["ema_decay"], guides["lr"], guides["batch_images"]) == (15, 0.99, 0.01, 8)
    assert (guides["variant"], guides["topk"], guides["seed"]) == ("topk", 16, 7)
    assert cfg["backbone_identity"]["image_size"] == 56 and cfg["backbone_identity"]["layer"] == 2
    assert cfg["imported_from"]["verified"] is True
    assert cfg["imported_from"]["official_settings"]["train"]["sae_datetime"] == "2026-02-03/20-36-06"


def test_an_explicit_official_config_file_is_read(tmp_path):
    files = _layout(tmp_path)
    moved = tmp_path / "guide_config.yaml"
    (tmp_path / "outputs" / GUIDE_RUN / ".hydra" / "config.yaml").rename(moved)
    out = tmp_path / "run"
    assert spg_main(_argv(files, out, "--backbone", "dinov2-large-tiny", "--official-config", str(moved))) == 0
    assert json.loads((out / "config.json").read_text())["guides"]["epochs"] == 15


@pytest.mark.parametrize(
    "extra, guide_sae, says",
    [
        (["--backbone", "dinov3-vitl16-tiny"], {}, "contradicts the official run's model.id facebook/dinov2-large"),
        (["--backbone", "dinov2-large-tiny", "--image-size", "112"], {}, "--image-size 112 contradicts"),
        (["--backbone", "dinov2-large-tiny", "--k", "32"], {}, "--k 32 contradicts"),
        (["--backbone", "dinov2-large-tiny"], {"checkpoint_epoch": 49}, "SAE's epoch 49"),
        (["--backbone", "dinov2-large-tiny"], {"datetime": "2026-01-01/00-00-00"}, "SAE run 2026-01-01/00-00-00"),
    ],
)
def test_contradictions_are_refused_and_nothing_is_written(tmp_path, capsys, extra, guide_sae, says):
    files = _layout(tmp_path, **guide_sae)
    out = tmp_path / "run"
    assert spg_main(_argv(files, out, *extra)) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_a_dead_mask_of_another_run_is_refused(tmp_path, capsys):
    files = _layout(tmp_path)
    other = tmp_path / "outputs" / "2026-02-05/11-00-00_none_x" / "checkpoints"
    other.mkdir(parents=True)
    files["dead"] = files["dead"].rename(other / files["dead"].name)
    assert spg_main(_argv(files, tmp_path / "run", "--backbone", "dinov2-large-tiny")) == 2
    assert "dead-atom mask is from the run 11-00-00_none_x" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_without_a_config_it_says_what_cannot_be_verified(tmp_path, capsys):
    files = _official_files(tmp_path)
    assert spg_main(_argv(files, tmp_path / "run", "--backbone", "dinov2-large-tiny")) == 0
    assert "backbone and image size cannot be verified" in capsys.readouterr().err
    assert spg_main(_argv(files, tmp_path / "run2")) == 2  # and no backbone to fall back on
    assert "--backbone is needed" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["text", "safetensors"])
def test_a_file_that_is_not_a_checkpoint_is_named_so(tmp_path, capsys, kind):
    files = _official_files(tmp_path)
    bad = tmp_path / f"bad.{kind}"
    if kind == "text":
        bad.write_text("epoch: 50\n")
    else:
        save_file({"w": torch.zeros(2)}, str(bad))
    files["sae"] = bad
    assert spg_main(_argv(files, tmp_path / "run", "--backbone", "dinov2-large-tiny")) == 2
    err = capsys.readouterr().err
    assert "not a torch checkpoint" in err and str(bad) in err and "weights_only" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size, says", [("0", "pass 14"), ("100", "98 or 112")])
def test_a_bad_image_size_is_refused_with_nothing_written(tmp_path, capsys, size, says):
    files = _official_files(tmp_path)
    out = tmp_path / "run"
    assert spg_main(_argv(files, out, "--backbone", "dinov2-large-tiny", "--image-size", size)) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()
