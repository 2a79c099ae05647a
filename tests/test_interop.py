"""`spg import-official`: state dicts built here in the official key layout -> an SPG Studio run
whose maps equal the official formulas computed directly; damaged inputs refused clearly.

Backbone: dinov2-large-tiny (D = 32, random weights, 56 px, 4 x 4 patches). Tolerance 1e-5 on
maps and scores (float32, different operation order; see tests/test_official.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from spg_core.cli import main as spg_main
from spg_core.errors import SPGError
from spg_core.inference import Predictor
from spg_core.interop.official import import_official

BACKBONE, D, M = "dinov2-large-tiny", 32, 64


@dataclasses.dataclass
class NotATensor:
    """A custom object: a checkpoint holding one needs a full unpickle, which we refuse."""

    value: int = 1


def _official_files(root: Path, prefix: str = "sae_list.0.") -> dict[str, Path]:
    g = torch.Generator().manual_seed(0)
    files = {
        "sae": root / "epoch_50.pth",
        "dead": root / "dead_atom_mask_layer_24.pt",
        "guides": root / "guides_epoch_15.pth",
    }
    torch.save(
        {
            "epoch": 50,
            "sae_state_dict": {
                f"{prefix}encoder.W.weight": torch.randn(M, D, generator=g),
                f"{prefix}decoder.dictionary._D": 3 * torch.randn(M, D, generator=g),
            },
        },
        files["sae"],
    )
    dead = torch.zeros(M, dtype=torch.bool)
    dead[::5] = True
    torch.save(dead, files["dead"])
    theta = 0.1 + 0.05 * torch.randn(4, M, generator=g)
    raw = theta + 0.5  # the non-EMA copy differs
    torch.save(
        {
            "epoch": 15,
            "modules_dict_state_dict": {"guide_0._guide_tensors": raw, "weight_module.weight": torch.ones(1, 4)},
            "ema_modules_dict_state_dict": {"guide_0._guide_tensors": theta, "weight_module.weight": torch.ones(1, 4)},
        },
        files["guides"],
    )
    return files


def _import(files: dict[str, Path], out: Path, **kw) -> Path:
    import_official(
        sae_checkpoint=str(files["sae"]),
        guide_checkpoint=str(files["guides"]),
        dead_mask=str(files["dead"]),
        out=str(out),
        backbone=BACKBONE,
        device="cpu",
        **kw,
    )
    return out


@pytest.mark.parametrize("prefix", ["sae_list.0.", ""])
def test_import_round_trip_maps_equal_the_official_formulas(tmp_path, prefix):
    files = _official_files(tmp_path, prefix)
    out = tmp_path / "run"
    assert (
        spg_main(
            [
                "import-official",
                "--sae-checkpoint",
                str(files["sae"]),
                "--guide-checkpoint",
                str(files["guides"]),
                "--dead-mask",
                str(files["dead"]),
                "--backbone",
                BACKBONE,
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pred = Predictor(out, device="cpu")
    assert pred.config_json["protocol"] == "official"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)) for _ in range(2)]
    result = pred.predict_images(images)

    # The official computation, from the files alone.
    sd = torch.load(files["sae"], weights_only=True)["sae_state_dict"]
    atoms = sd[f"{prefix}decoder.dictionary._D"]
    atoms = atoms / (atoms.norm(dim=-1, keepdim=True) + 1e-8)  # normalised again in the forward
    theta = torch.load(files["guides"], weights_only=True)["ema_modules_dict_state_dict"]["guide_0._guide_tensors"]
    dead = torch.load(files["dead"], weights_only=True)
    c = torch.relu(theta).masked_fill(dead, 0.0)
    g = c @ atoms  # [4, D]
    tokens = result["tokens"]
    sim = F.cosine_similarity(tokens[:, :, None], g[None, None, 2:], dim=-1)
    p = torch.softmax(sim / 0.07, dim=-1).permute(0, 2, 1).reshape(2, 2, 4, 4)
    up = F.interpolate(p, size=(56, 56), mode="bilinear", align_corners=False)
    raw = ((up[:, 1] + 1 - up[:, 0]) / 2).double().numpy()
    smoothed = np.stack([gaussian_filter(m, sigma=4) for m in raw])
    np.testing.assert_allclose(result["maps"].numpy(), smoothed, atol=1e-5)
    np.testing.assert_allclose(result["scores"].numpy(), smoothed.reshape(2, -1).max(1), atol=1e-5)
    # Dead atoms never carry a coefficient, so they can never be ranked.
    assert torch.all(pred.guides.all_coefficients()[:, dead] == 0)
    assert pred.sae.dead is not None and torch.equal(pred.sae.dead, dead)


def test_import_takes_the_raw_copy_with_no_ema(tmp_path):
    files = _official_files(tmp_path)
    run = _import(files, tmp_path / "run", ema=False)
    pred = Predictor(run, device="cpu")
    raw = torch.load(files["guides"], weights_only=True)["modules_dict_state_dict"]["guide_0._guide_tensors"]
    torch.testing.assert_close(pred.guides.theta_ema, raw)


def _refusal(tmp_path: Path, files: dict[str, Path], name: str) -> str:
    with pytest.raises(SPGError) as info:
        _import(files, tmp_path / name)
    assert not (tmp_path / name / "config.json").exists()  # nothing half-written
    return str(info.value)


def test_wrong_key_is_refused_naming_file_and_key(tmp_path):
    files = _official_files(tmp_path)
    torch.save({"epoch": 50, "sae_state_dict": {"encoder.weight": torch.randn(M, D)}}, files["sae"])
    msg = _refusal(tmp_path, files, "k")
    assert str(files["sae"]) in msg and "decoder.dictionary._D" in msg and "missing" in msg


def test_wrong_shape_is_refused_naming_file_and_key(tmp_path):
    files = _official_files(tmp_path)
    torch.save(
        {"epoch": 15, "ema_modules_dict_state_dict": {"guide_0._guide_tensors": torch.randn(2, M)}}, files["guides"]
    )
    msg = _refusal(tmp_path, files, "s")
    assert str(files["guides"]) in msg and "guide_0._guide_tensors" in msg and "[2, 64]" in msg
    files = _official_files(tmp_path)
    torch.save(
        {"sae_state_dict": {"encoder.W.weight": torch.randn(M, 48), "decoder.dictionary._D": torch.randn(M, 48)}},
        files["sae"],
    )  # D 48: another backbone's SAE
    msg = _refusal(tmp_path, files, "s2")
    assert str(files["sae"]) in msg and "decoder.dictionary._D" in msg and "[*, 32]" in msg


def test_truncated_file_is_refused(tmp_path):
    files = _official_files(tmp_path)
    data = files["sae"].read_bytes()
    files["sae"].write_bytes(data[: len(data) // 2])
    msg = _refusal(tmp_path, files, "t")
    assert str(files["sae"]) in msg and "truncated" in msg


def test_full_pickle_is_refused_without_unpickling(tmp_path):
    files = _official_files(tmp_path)
    torch.save({"epoch": 15, "ema_modules_dict_state_dict": {"guide_0._guide_tensors": NotATensor()}}, files["guides"])
    msg = _refusal(tmp_path, files, "p")
    assert str(files["guides"]) in msg and "other than tensors" in msg


def test_dead_mask_of_another_width_is_refused(tmp_path):
    files = _official_files(tmp_path)
    torch.save(torch.zeros(M + 1, dtype=torch.bool), files["dead"])
    msg = _refusal(tmp_path, files, "d")
    assert str(files["dead"]) in msg and f"[{M}]" in msg
