"""Reports beside the paper, and the sweep's argument parsing and tidy output."""

import math

import pandas as pd
import pytest

from spg_core.errors import SPGError
from spg_core.report import paper_results, paper_row, per_category_csv, report_markdown
from spg_core.sweep import Aggregation, parse_aggregations, parse_guides, sweep_figures


def _metrics(cats, value=0.9):
    per = {c: {"image_auroc": value, "image_ap": value, "pixel_auroc": value, "aupro": value} for c in cats}
    return {"mean": {k: value for k in ("image_auroc", "image_ap", "pixel_auroc", "aupro")}, "per_category": per}


def test_paper_tables_hold_the_papers_means():
    p = paper_results()
    assert p["VisA->MVTec AD"]["SPG (DINOv3)"]["image_auroc"]["mean"] == 91.4
    assert p["MVTec AD->VisA"]["SPG (DINOv3)"]["aupro"]["mean"] == 89.1
    assert p["MVTec AD->VisA"]["SPG (OpenCLIP)"]["pixel_auroc"]["mean"] == 94.7
    assert len(p["VisA->MVTec AD"]["SPG (DINOv3)"]["pixel_auroc"]) == 16  # 15 categories + mean


def test_report_puts_the_matching_paper_row_beside_ours():
    visa = ["candle", "capsules", "pcb1"]
    m = _metrics(visa, 0.95)
    m["settings"] = {
        "aux": "mvtec:/data/mvtec",
        "target": "visa:/data/visa",
        "backbone": "dinov3-vitl16",
        "method": "spg",
        "aupro_variant": "mvtec",
        "smoothing_sigma": 4.0,
    }
    name, _table = paper_row(m["settings"])
    assert name == "SPG (DINOv3), MVTec AD->VisA"
    text = report_markdown(m)
    # candle image AUROC: ours 95.0, paper 74.7 -> +20.3
    assert "| candle | 95.0 | 74.7 | +20.3 |" in text
    assert "smoothing sigma 4.0" in text
    assert "## Pixel AUPRO" in text


def test_paper_aupro_is_compared_with_the_official_aupro_only():
    """The paper's AUPRO is the official (AnomalyCLIP) one: our exact MVTec AUPRO gets no paper
    column, our aupro_official does; an old metrics.json without it shows n/a, not an error."""
    m = _metrics(["candle"], 0.5)
    m["per_category"]["candle"]["aupro_official"] = m["mean"]["aupro_official"] = 0.8
    m["settings"] = {"aux": "mvtec:/d", "target": "visa:/d", "backbone": "dinov3-vitl16", "method": "spg"}
    text = report_markdown(m)
    official = text.split("## Pixel AUPRO (official")[1]
    paper = paper_results()["MVTec AD->VisA"]["SPG (DINOv3)"]["aupro"]["candle"]
    assert f"| candle | 80.0 | {paper:.1f} | {80.0 - paper:+.1f} |" in official
    exact = text.split("## Pixel AUPRO (MVTec AD, exact)")[1].split("##")[0]
    assert "reports no figure under this definition" in exact and "| candle | 50.0 |" in exact
    old = _metrics(["candle"], 0.5)
    old["settings"] = m["settings"]
    assert "| candle | n/a |" in report_markdown(old).split("## Pixel AUPRO (official")[1]


@pytest.mark.parametrize(
    "settings",
    [
        {"aux": "synthetic-a", "target": "synthetic-b", "backbone": "dinov3-vitl16"},
        {"aux": "mvtec:/m", "target": "visa:/v", "backbone": "builtin"},
        {"aux": "mvtec:/m", "target": "visa:/v", "backbone": "dinov3-vitl16", "method": "free_guides"},
    ],
)
def test_no_paper_row_when_the_setting_differs(settings):
    assert paper_row(settings) is None


def test_per_category_csv_keeps_nan_and_mean_last():
    m = _metrics(["a", "b"])
    m["per_category"]["b"]["image_auroc"] = float("nan")
    rows = per_category_csv(m).strip().splitlines()
    assert rows[0].startswith("category,image_auroc") and rows[-1].startswith("mean,")
    assert "nan" in rows[2]


def test_sweep_argument_parsing():
    assert parse_aggregations("max,mean,lse:0.1") == [Aggregation("max"), Aggregation("mean"), Aggregation("lse", 0.1)]
    g = parse_guides("relu_l1:1e-3,topk:32")
    assert [x.label for x in g] == ["relu_l1(lambda=0.001)", "topk(K=32)"]
    for bad in ("lse", "median"):
        with pytest.raises(SPGError):
            parse_aggregations(bad)
    with pytest.raises(SPGError):
        parse_guides("softplus:1")


def test_sweep_figures_follow_the_axes_that_vary():
    rows = []
    for width in (256, 512):
        for agg in ("max", "mean"):
            for metric in ("image_auroc", "pixel_auroc"):
                rows.append(
                    {
                        "backbone": "builtin",
                        "width": width,
                        "k": 8,
                        "guide": "topk(K=32)",
                        "guide_variant": "topk",
                        "active_atoms": 64,
                        "aggregation": agg,
                        "category": "mean",
                        "metric": metric,
                        "value": 0.5 + width / 2048,
                    }
                )
    figs = sweep_figures(pd.DataFrame(rows))
    assert set(figs) == {"sae_width_k", "aggregation"}
    ys = [y for trace in figs["sae_width_k"].data for y in trace.y]
    assert not any(math.isnan(y) for y in ys) and max(ys) == pytest.approx(0.75)
