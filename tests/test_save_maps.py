"""`spg eval --save-maps DIR`: each image's final map, path, label and score, equal to the
official formulas computed here from the checkpoint files and the stored target tokens."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from helpers.tiny_data import TINY_TARGET, tiny_set
from scipy.ndimage import gaussian_filter
from test_interop import _import, _official_files

from spg_core.cli import main as spg_main
from spg_core.store import TokenStore


def test_saved_maps_equal_the_formulas(tmp_path):
    files = _official_files(tmp_path)
    run = _import(files, tmp_path / "run")
    target = tiny_set(tmp_path / "data", TINY_TARGET)
    maps_dir = tmp_path / "maps"
    argv = ["eval", "--run", str(run), "--target", target, "--save-maps", str(maps_dir), "--quiet"]
    assert spg_main([*argv, "--device", "cpu", "--cache-dir", str(tmp_path / "cache")]) == 0

    store = TokenStore(json.loads((run / "config.json").read_text())["target_store"])
    assert store.manifest["key"]["dtype"] == "float32"  # official: tokens as extracted
    saved = sorted(maps_dir.glob("*.npz"))
    assert len(saved) == store.num_images == 14

    # The official computation, from the files alone (see test_interop.py).
    sd = torch.load(files["sae"], weights_only=True)["sae_state_dict"]
    atoms = sd["sae_list.0.decoder.dictionary._D"]
    atoms = atoms / (atoms.norm(dim=-1, keepdim=True) + 1e-8)
    theta = torch.load(files["guides"], weights_only=True)["ema_modules_dict_state_dict"]["guide_0._guide_tensors"]
    g = torch.relu(theta).masked_fill(torch.load(files["dead"], weights_only=True), 0.0) @ atoms  # [4, D]
    tokens = store.tokens(range(store.num_images))  # [K, 16, D]
    sim = F.cosine_similarity(tokens[:, :, None], g[None, None, 2:], dim=-1)
    p = torch.softmax(sim / 0.07, dim=-1).permute(0, 2, 1).reshape(-1, 2, 4, 4)
    up = F.interpolate(p, size=(56, 56), mode="bilinear", align_corners=False)
    raw = ((up[:, 1] + 1 - up[:, 0]) / 2).double().numpy()
    expected = np.stack([gaussian_filter(m, sigma=4) for m in raw])

    metrics_scores = []
    for i, path in enumerate(saved):
        with np.load(path) as z:
            assert path.name == f"{i:06d}.npz" and z["anomaly_map"].shape == (56, 56)
            # float32 maps, a different operation order: agreement measured at ~1e-7
            np.testing.assert_allclose(z["anomaly_map"], expected[i], atol=1e-5)
            np.testing.assert_allclose(float(z["image_score"]), expected[i].max(), atol=1e-5)
            assert str(z["image_path"]) == store.images[i]["image_path"]
            assert int(z["label"]) == store.images[i]["label"]
            metrics_scores.append(float(z["image_score"]))
    assert len(set(np.round(metrics_scores, 6))) > 1  # maps differ between images: not a constant
