"""`spg sweep` on a tiny grid: every setting evaluated with metrics.evaluate's rules, in one tidy table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers.tiny_data import TINY_BACKBONE, TINY_TARGET, tiny_pair

from spg_core.config import GuideConfig, SAEConfig
from spg_core.metrics import METRIC_KEYS
from spg_core.sweep import Aggregation, GuideSetting, run_sweep


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    # kaleido starts a headless Chromium per PNG (~8 s each here): the PNGs are optional (sweep
    # writes the HTML figures whatever happens), so this test runs as a machine without one.
    mp = pytest.MonkeyPatch()
    mp.setattr("plotly.graph_objects.Figure.write_image", _no_browser)
    out = tmp_path_factory.mktemp("sweep")
    aux, target = tiny_pair(tmp_path_factory.mktemp("data"))
    frame = run_sweep(
        aux=aux,
        target=target,
        backbones=[TINY_BACKBONE],
        widths=[32, 64],
        ks=[4],
        guides=[GuideSetting("relu_l1", 1e-3), GuideSetting("topk", 8)],
        aggregations=[Aggregation("max"), Aggregation("mean")],
        base_sae=SAEConfig(epochs=1),
        base_guides=GuideConfig(epochs=2),
        out=out,
        device="cpu",
        progress=False,
    )
    mp.undo()
    return frame, out


def _no_browser(*args, **kwargs):
    raise RuntimeError("no headless browser")


def test_every_setting_category_and_metric_is_one_row(sweep):
    frame, out = sweep
    settings = 2 * 1 * 2 * 2  # widths x ks x guides x aggregations
    cats = sorted(set(frame["category"]) - {"mean"})
    assert cats == sorted(TINY_TARGET)
    assert len(frame) == settings * (len(cats) + 1) * len(METRIC_KEYS)
    assert set(frame["metric"]) == set(METRIC_KEYS)
    assert not frame.duplicated(["width", "k", "guide", "aggregation", "category", "metric"]).any()
    finite = frame["value"].dropna()
    assert ((finite >= 0) & (finite <= 1)).all()
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["widths"] == [32, 64] and saved["guides"] == ["relu_l1(lambda=0.001)", "topk(K=8)"]
    assert (out / "sweep.csv").is_file() and (out / "sae_width_k.html").is_file()
    assert not (out / "sae_width_k.png").exists()


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
