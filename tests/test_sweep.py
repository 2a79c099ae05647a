"""`spg sweep` on a tiny grid: every setting evaluated with metrics.evaluate's rules, in one tidy table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spg_core.config import GuideConfig, SAEConfig
from spg_core.metrics import METRIC_KEYS
from spg_core.sweep import Aggregation, GuideSetting, run_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    frame = run_sweep(aux="synthetic-a", target="synthetic-b", backbones=["builtin"], widths=[32, 64], ks=[4],
                      guides=[GuideSetting("relu_l1", 1e-3), GuideSetting("topk", 8)],
                      aggregations=[Aggregation("max"), Aggregation("mean")],
                      base_sae=SAEConfig(epochs=1), base_guides=GuideConfig(epochs=2), out=out, device="cpu",
                      progress=False)
    return frame, out


def test_every_setting_category_and_metric_is_one_row(sweep):
    frame, out = sweep
    settings = 2 * 1 * 2 * 2                                # widths x ks x guides x aggregations
    cats = sorted(set(frame["category"]) - {"mean"})
    assert cats == ["brushed", "pill", "plug", "tiles"]      # synthetic-b's categories
    assert len(frame) == settings * (len(cats) + 1) * len(METRIC_KEYS)
    assert set(frame["metric"]) == set(METRIC_KEYS)
    assert not frame.duplicated(["width", "k", "guide", "aggregation", "category", "metric"]).any()
    finite = frame["value"].dropna()
    assert ((finite >= 0) & (finite <= 1)).all()
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["widths"] == [32, 64] and saved["guides"] == ["relu_l1(lambda=0.001)", "topk(K=8)"]
    assert (out / "sweep.csv").is_file() and (out / "sae_width_k.html").is_file()


def test_mean_row_follows_evaluates_rule(sweep):
    """The category "mean" is the mean over the categories where a metric is defined."""
    frame, _ = sweep
    for _, group in frame.groupby(["width", "k", "guide", "aggregation", "metric"]):
        per_cat = group[group["category"] != "mean"]["value"].to_numpy(dtype=float)
        mean = float(group[group["category"] == "mean"]["value"].iloc[0])
        want = np.nanmean(per_cat) if np.isfinite(per_cat).any() else math.nan
        assert mean == pytest.approx(want, abs=1e-12, nan_ok=True)


def test_pixel_metrics_shared_by_aggregations_image_metrics_not(sweep):
    """Aggregations re-pool the same maps: pixel metrics equal, image scores differ."""
    frame, _ = sweep
    key = ["width", "k", "guide", "category", "metric"]
    wide = frame.pivot_table(index=key, columns="aggregation", values="value").reset_index()
    pixel = wide[wide["metric"].isin(["pixel_auroc", "aupro", "aupro_official"])]
    assert np.allclose(pixel["max"], pixel["mean"], equal_nan=True)
    image = wide[wide["metric"] == "image_auroc"]
    assert not np.allclose(image["max"], image["mean"])
