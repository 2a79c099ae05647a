"""Thresholds and the map colour scale chosen on the auxiliary side (spg_core.thresholds, spg_core.render)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spg_core import render
from spg_core.errors import SPGError
from spg_core.thresholds import best_f1_threshold, decision_counts, fpr_threshold, image_threshold, pixel_scale


def test_best_f1_threshold_separates_the_classes():
    assert best_f1_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.35)
    assert best_f1_threshold([0.1, 0.2, 0.9, 0.95], [0, 0, 1, 1]) == pytest.approx(0.9)


def test_fpr_threshold_lets_through_at_most_the_chosen_share():
    good = np.linspace(0.0, 1.0, 40)  # 40 good images, as in the demo's target
    for fpr in (0.0, 0.05, 0.1, 0.5):
        t = fpr_threshold(good, fpr)
        flagged = (good >= t).mean()
        assert flagged <= fpr + 1e-12
        assert flagged > fpr - 1 / 40 - 1e-12  # and no stricter than it must be
    with pytest.raises(SPGError):
        fpr_threshold([], 0.05)


def test_image_threshold_records_both_rules_and_their_outcomes():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(0.2, 0.05, 60), rng.normal(0.5, 0.05, 40)]
    labels = np.r_[np.zeros(60, int), np.ones(40, int)]
    out = image_threshold(scores, labels, fpr=0.05)
    assert out["rule"] == "aux_fpr" and out["threshold"] == out["aux_fpr"]["threshold"]
    assert out["aux_max_f1"]["f1"] == decision_counts(scores, labels, out["aux_max_f1"]["threshold"])["f1"]
    assert out["aux_max_f1"]["f1"] > 0.95  # the classes are 6 sigma apart
    assert out["aux_fpr"]["fpr"] <= 0.05
    only_good = image_threshold(scores[:60], labels[:60])
    assert only_good["rule"] == "aux_fpr"
    only_bad = image_threshold(scores[60:], labels[60:])
    assert only_bad["rule"] == "aux_max_f1" and "aux_fpr" not in only_bad  # no good image to count FPs on


def test_pixel_scale_spans_the_normal_pixels_in_log_odds():
    rng = np.random.default_rng(1)
    maps = 1 / (1 + np.exp(-rng.normal(-6.0, 1.0, (8, 32, 32))))  # logits ~ N(-6, 1)
    scale = pixel_scale(maps, smoothing_sigma=0.0)
    assert scale["space"] == "logit"
    assert scale["vmin"] == pytest.approx(-6.0, abs=0.05)  # the median logit
    assert scale["vmax"] == pytest.approx(-6.0 + 3.09, abs=0.25)  # the 99.9th percentile of N(-6, 1)
    smoothed = pixel_scale(maps, smoothing_sigma=2.0)
    assert smoothed["vmax"] < scale["vmax"]  # smoothing narrows the normal spread


def test_fitted_scale_makes_a_weak_defect_stand_out():
    """A defect 1e-3 above a 1e-6 background is invisible on the 0-1 scale, saturated on the fitted one."""
    probs = np.full((64, 64), 1e-6)
    probs[8:16, 8:16] = 1e-3
    fitted = render.fitted_scale({"vmin": float(render.logit(1e-6)), "vmax": float(render.logit(1e-4))})

    base = Image.new("RGB", (64, 64), (128, 128, 128))
    for scale, visible in ((render.PROBABILITY_SCALE, False), (fitted, True)):
        pic = np.asarray(render.map_picture(base, probs, scale, alpha=1.0)).astype(int)
        contrast = np.abs(pic[12, 12] - pic[40, 40]).sum()
        # The scale's two ends differ by 181 (sum of |RGB| steps); the 0-1 scale gives ~0 here.
        assert (contrast > 150) == visible, (scale.space, contrast)
    assert "99.9th percentile" in fitted.legend


def test_map_picture_draws_the_thresholded_contour_and_the_truth():
    probs = np.zeros((64, 64))
    probs[20:40, 20:40] = 0.9
    truth = np.zeros((64, 64), bool)
    truth[30:50, 30:50] = True

    pic = np.asarray(
        render.map_picture(Image.new("RGB", (64, 64)), probs, render.PROBABILITY_SCALE, contour_level=0.5, truth=truth)
    )
    assert (pic[20, 25] == (255, 255, 255)).all() and (
        pic[19, 25] == (255, 255, 255)
    ).all()  # the contour of the thresholded map, white
    assert (pic[49, 45] == (60, 255, 120)).all()  # the ground-truth outline, green
    assert not (pic[10, 10] == (255, 255, 255)).all()


def test_display_map_applies_the_runs_smoothing():
    patch = np.zeros((4, 4), np.float32)
    patch[1, 1] = 1.0
    sharp = render.display_map(patch, 32, 0.0)
    smooth = render.display_map(patch, 32, 3.0)
    assert sharp.shape == smooth.shape == (32, 32)
    assert smooth.max() < sharp.max() and smooth.sum() == pytest.approx(sharp.sum(), rel=0.05)
