"""`spg run --method free_guides` and `--method random_dict` end to end, on tiny data.

The ablation baselines of the paper's Table 3: free guides learn two vectors in token
space (no dictionary, no SAE file); random_dict trains guides over an untrained random
dictionary. Both must produce a complete, loadable run with every metric defined.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny_data import TINY_RUN_ARGS, TINY_TARGET, tiny_pair

from spg_core.cli import main
from spg_core.guides import GuideSet
from spg_core.metrics import METRIC_KEYS
from spg_core.runs import RunDir
from spg_core.sae import TopKSAE


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("data"))


def _run(data, tmp_path, method: str) -> RunDir:
    aux, target = data
    out = tmp_path / method
    assert main(["run", "--aux", aux, "--target", target, "--out", str(out), "--method", method, *TINY_RUN_ARGS]) == 0
    return RunDir(out)


def _check_metrics(run: RunDir) -> dict:
    metrics = json.loads(run.file("metrics.json").read_text())
    assert sorted(metrics["per_category"]) == sorted(TINY_TARGET)
    for row in [metrics["mean"], *metrics["per_category"].values()]:
        assert set(METRIC_KEYS) <= set(row)
        for key in ("image_auroc", "image_ap", "pixel_auroc", "aupro"):
            assert 0.0 <= row[key] <= 1.0, (key, row)
    return metrics


def test_free_guides_end_to_end(data, tmp_path):
    run = _run(data, tmp_path, "free_guides")
    cfg = json.loads(run.file("config.json").read_text())
    assert cfg["method"] == "free_guides"
    assert not run.file("sae.safetensors").exists()  # no dictionary at all
    assert json.loads(run.file("sae.json").read_text())["trained"] is False
    _check_metrics(run)
    # the guides live in token space: one coefficient per token dimension (a width mismatch raises)
    GuideSet.load(str(run.file("guides.safetensors")), expect_width=cfg["backbone_identity"]["dim"])


def test_random_dict_end_to_end(data, tmp_path):
    run = _run(data, tmp_path, "random_dict")
    assert json.loads(run.file("config.json").read_text())["method"] == "random_dict"
    info = json.loads(run.file("sae.json").read_text())
    assert info["trained"] is False and info["method"] == "random_dict"
    sae, _ = TopKSAE.load(str(run.file("sae.safetensors")))
    assert sae.width == 32 and sae.k == 4
    # an untrained dictionary of unit-norm atoms: what the baseline claims to be
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(32), atol=1e-5)
    _check_metrics(run)
    # the same seed draws the same dictionary: the baseline is reproducible
    again = _run(data, tmp_path / "again", "random_dict")
    sae2, _ = TopKSAE.load(str(again.file("sae.safetensors")))
    assert torch.equal(sae.W_dec, sae2.W_dec)
