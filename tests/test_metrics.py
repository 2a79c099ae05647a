"""Tests for spg_core.metrics against slow, independent implementations.

The references here are deliberately naive: sklearn for the ROC metrics, and
per-threshold loops with scipy.ndimage.label components for AUPRO (every
distinct value for the MVTec definition; for the official SPG one, its 200-step
grid re-derived from riips/SPG src/metrics.py ``cal_pro_score``).
"""

from __future__ import annotations

import bisect
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from spg_core import metrics as M
from spg_core.errors import SPGError
from spg_core.metrics import accumulators, pixels, two_pass
from spg_core.metrics.aupro import aupro_from, aupro_official_from
from spg_core.metrics.pixel_auroc import pixel_auroc_from
from spg_core.metrics.smoothing import _gaussian_torch

EIGHT = np.ones((3, 3), dtype=int)


# --------------------------------------------------------------------------
# slow references
# --------------------------------------------------------------------------


def _components(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    out = []
    for k, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=EIGHT)
        out += [(k, lab == c) for c in range(1, n + 1)]
    return out


def _trapezoid_to(x: list[float], y: list[float], x_max: float) -> float:
    """MVTec-style: trapezoid up to x_max, y interpolated at x_max."""
    area, i = 0.0, 1
    while i < len(x) and x[i] <= x_max:
        area += 0.5 * (y[i] + y[i - 1]) * (x[i] - x[i - 1])
        i += 1
    if i < len(x) and x[i - 1] < x_max:
        y_at = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        area += 0.5 * (y_at + y[i - 1]) * (x_max - x[i - 1])
    return area


def slow_aupro_mvtec(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Loop over every distinct value t (high to low): FPR = normal pixels >= t,
    PRO = mean over 8-connected components of the covered fraction."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = masks.astype(bool)
    comps = _components(masks)
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        xs.append((above & normal).sum() / normal.sum())
        ys.append(float(np.mean([above[k][c].mean() for k, c in comps])))
    xs.append(1.0)
    ys.append(1.0)
    assert all(b >= a for a, b in itertools.pairwise(xs))
    assert bisect.bisect(xs, max_fpr) >= 1
    return _trapezoid_to(xs, ys, max_fpr) / max_fpr


def slow_aupro_official(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """The official SPG ``cal_pro_score``, re-derived naively: the maps as the float32
    arrays the official code holds, 200 thresholds ``arange(min, max, (max - min) / 200)``
    in numpy's arithmetic on those float32 scalars, a pixel positive when > th, every
    8-connected region weighted equally, FPR < max_fpr kept, FPR min-max rescaled,
    sklearn's auc. Where the official code raises (no or one point kept) or divides
    0 by 0, NaN."""
    amaps = np.asarray(maps).astype(np.float32)
    masks = masks.astype(bool)
    comps = _components(masks)
    lo, hi = amaps.min(), amaps.max()
    pros, fprs = [], []
    for th in np.arange(lo, hi, (hi - lo) / 200):
        binary = amaps > th
        pros.append(np.mean([binary[k][c].sum() / c.sum() for k, c in comps]))
        fprs.append(np.logical_and(~masks, binary).sum() / (~masks).sum())
    pros_a, fprs_a = np.array(pros), np.array(fprs)
    keep = fprs_a < max_fpr
    f = fprs_a[keep]
    if f.size < 2 or f.max() == f.min():
        return math.nan
    f = (f - f.min()) / (f.max() - f.min())
    return float(auc(f, pros_a[keep]))


def sk_pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    return float(roc_auc_score(masks.ravel().astype(int), np.asarray(maps, dtype=np.float64).ravel()))


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------


def make_set(
    seed: int, k: int = 5, size: int = 20, levels: int | None = None, dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """Random rectangles (some touching the border, some single pixels) and
    maps that are higher inside them, optionally quantised to ``levels``."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((k, size, size), dtype=bool)
    for i in range(1, k):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size, 2)
            masks[i, y : y + rng.integers(1, 7), x : x + rng.integers(1, 7)] = True
        masks[i, rng.integers(0, size), rng.integers(0, size)] = True  # 1-pixel component
    masks[1, 0, :3] = True  # touches the border
    masks[-1, -3:, -1] = True
    maps = rng.random((k, size, size)) * 0.7 + masks * rng.random((k, size, size)) * 0.6
    if levels is not None:
        maps = np.round(maps / maps.max() * (levels - 1)) / (levels - 1)
    return maps.astype(dtype), masks


DTYPES = [np.float16, np.float32]
CASES = [dict(seed=s, levels=lv) for s in (0, 1, 2) for lv in (None, 5)]


# --------------------------------------------------------------------------
# image level
# --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_image_metrics_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.random(n) < 0.6
    scores = rng.random(n) + labels * 0.3
    if seed % 2:  # heavy ties
        scores = np.round(scores * 3) / 3
    assert M.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert M.image_ap(scores, labels) == pytest.approx(average_precision_score(labels, scores), abs=1e-6)
    t = torch.from_numpy(scores)
    assert M.image_auroc(t, torch.from_numpy(labels)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)


def test_image_metrics_single_class_is_nan_with_warning() -> None:
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(M.image_auroc([0.1, 0.5], [0, 0]))
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(M.image_ap([0.1, 0.5], [0, 0]))
    assert M.image_ap([0.1, 0.5], [1, 1]) == pytest.approx(1.0)


# --------------------------------------------------------------------------
# pixel AUROC
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_pixel_auroc_matches_sklearn(dtype: type, case: dict) -> None:
    maps, masks = make_set(dtype=dtype, **case)
    assert M.pixel_auroc(maps, masks, device="cpu") == pytest.approx(sk_pixel_auroc(maps, masks), abs=1e-6)


def test_pixel_auroc_other_dtypes_and_torch() -> None:
    maps, masks = make_set(3, k=4, size=24)
    ref = sk_pixel_auroc(maps, masks)
    assert M.pixel_auroc(maps.astype(np.float64), masks, device="cpu") == pytest.approx(ref, abs=1e-6)
    assert M.pixel_auroc(torch.from_numpy(maps), torch.from_numpy(masks), device="cpu") == pytest.approx(ref, abs=1e-6)
    assert M.pixel_auroc(maps, masks.astype(np.uint8), device="cpu") == pytest.approx(ref, abs=1e-6)
    ints = (maps * 1000).astype(np.int64) - 300  # integer maps: exact too
    assert M.pixel_auroc(ints, masks, device="cpu") == pytest.approx(sk_pixel_auroc(ints, masks), abs=1e-6)
    assert M.aupro(ints, masks, device="cpu") == pytest.approx(slow_aupro_mvtec(ints, masks), abs=1e-9)
    assert M.aupro(masks, masks, device="cpu") == pytest.approx(1.0)  # bool maps
    bf = torch.from_numpy(maps).to(torch.bfloat16)
    assert M.pixel_auroc(bf, torch.from_numpy(masks), device="cpu") == pytest.approx(
        sk_pixel_auroc(bf.float().numpy(), masks), abs=1e-6
    )
    h = torch.from_numpy(maps).half()
    assert M.pixel_auroc(h, masks, device="cpu") == pytest.approx(sk_pixel_auroc(h.float().numpy(), masks), abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_signed_zero_inf_and_negative_values(dtype: type) -> None:
    maps, masks = make_set(4, k=3, size=16, levels=4)
    maps = (maps - 0.5).astype(dtype)  # negative values
    maps[0, :4] = -0.0
    maps[1, :4] = 0.0
    maps[2, 0, :2] = np.inf
    maps[1, 5, :2] = -np.inf
    # sklearn rejects inf: the same order with finite stand-ins gives the same curves
    finite = np.nan_to_num(maps.astype(np.float64), posinf=10.0, neginf=-10.0)
    assert M.pixel_auroc(maps, masks, device="cpu") == pytest.approx(sk_pixel_auroc(finite, masks), abs=1e-6)
    assert M.aupro(maps, masks, device="cpu") == pytest.approx(slow_aupro_mvtec(finite, masks), abs=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_perfect_inverted_and_constant_maps(dtype: type) -> None:
    _, masks = make_set(5)
    perfect = masks.astype(dtype)
    assert M.pixel_auroc(perfect, masks, device="cpu") == pytest.approx(1.0, abs=1e-12)
    assert M.aupro(perfect, masks, device="cpu") == pytest.approx(1.0, abs=1e-12)
    inverted = (1 - masks).astype(dtype)
    assert M.pixel_auroc(inverted, masks, device="cpu") == pytest.approx(0.0, abs=1e-12)
    assert M.aupro(inverted, masks, device="cpu") == pytest.approx(0.0, abs=1e-12)
    constant = np.full(masks.shape, 0.25, dtype=dtype)
    assert M.pixel_auroc(constant, masks, device="cpu") == pytest.approx(0.5, abs=1e-12)
    # one diagonal segment (0,0)->(1,1): area to 0.3 is 0.045, / 0.3
    assert M.aupro(constant, masks, device="cpu") == pytest.approx(0.15, abs=1e-12)
    assert M.aupro(constant, masks, device="cpu") == pytest.approx(slow_aupro_mvtec(constant, masks), abs=1e-12)
    with pytest.warns(UserWarning, match="constant map"):
        assert math.isnan(M.aupro_official(constant, masks, device="cpu"))


def test_no_anomalous_pixel_is_nan_with_warning() -> None:
    maps, masks = make_set(6)
    with pytest.warns(UserWarning, match="undefined"):
        assert math.isnan(M.pixel_auroc(maps, np.zeros_like(masks), device="cpu"))
    with pytest.warns(UserWarning, match="no anomalous pixel"):
        assert math.isnan(M.aupro(maps, np.zeros_like(masks), device="cpu"))


# --------------------------------------------------------------------------
# AUPRO
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_aupro_mvtec_matches_threshold_loop(dtype: type, case: dict) -> None:
    maps, masks = make_set(dtype=dtype, **case)
    ref = slow_aupro_mvtec(maps, masks)
    assert M.aupro(maps, masks, device="cpu") == pytest.approx(ref, abs=1e-3)
    assert M.aupro(maps, masks, device="cpu") == pytest.approx(ref, abs=1e-9)  # in fact exact


@pytest.mark.parametrize("max_fpr", [0.01, 0.05, 0.3, 0.77, 1.0])
def test_aupro_mvtec_integration_limits(max_fpr: float) -> None:
    maps, masks = make_set(7, levels=9)
    assert M.aupro(maps, masks, max_fpr=max_fpr, device="cpu") == pytest.approx(
        slow_aupro_mvtec(maps, masks, max_fpr), abs=1e-9
    )


def test_aupro_components_are_8_connected() -> None:
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal: one component with 8-connectivity
    masks[0, 5, 5] = True  # 1-pixel component in the corner
    masks[1, 0, :] = True  # whole border row
    s = M.summarise_pixels(np.zeros(masks.shape, np.float32), masks, device="cpu")
    assert s.n_components == 3
    maps = np.zeros(masks.shape, dtype=np.float32)
    maps[0, 1, 1] = 1.0  # half of the diagonal component
    maps[1, 0, :3] = 0.5
    maps[0, 0, 0] = 0.7  # a false positive
    assert M.aupro(maps, masks, device="cpu") == pytest.approx(slow_aupro_mvtec(maps, masks), abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES + [dict(seed=s, levels=12) for s in (0, 1)])
def test_aupro_official_matches_the_official_loop(dtype: type, case: dict) -> None:
    maps, masks = make_set(dtype=dtype, **case)
    ref = slow_aupro_official(maps, masks)
    if math.isnan(ref):  # 5 levels: one grid point below FPR 0.3, the official code raises
        with pytest.warns(UserWarning, match="official AUPRO is undefined"):
            assert math.isnan(M.aupro_official(maps, masks, device="cpu"))
        return
    assert M.aupro_official(maps, masks, device="cpu") == pytest.approx(ref, abs=1e-9)


def test_aupro_official_thresholds_are_the_float32_grid() -> None:
    """Maps whose values sit exactly on float64 grid points but not on the float32 one
    tell the two grids apart: the official code compares float32 maps with thresholds
    built from float32 min, max and step."""
    rng = np.random.default_rng(21)
    maps = rng.random((3, 24, 24)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, 4:12, 5:15] = masks[2, 10:20, 2:8] = True
    maps[masks] += 0.5
    lo, hi = maps.min(), maps.max()
    grid = np.arange(lo, hi, (hi - lo) / 200)
    assert np.array_equal(M.official_thresholds(float(lo), float(hi)), grid)
    # values on the grid: the strict '>' decides, as in the official code
    maps.reshape(-1)[:150] = grid[:150].astype(np.float32)
    assert M.aupro_official(maps, masks, device="cpu") == pytest.approx(slow_aupro_official(maps, masks), abs=1e-12)


def test_aupro_official_nan_with_warning_where_the_official_code_raises() -> None:
    """Half of the normal pixels at the maximum: every threshold below it has FPR >= 0.5,
    so no point is kept; the official code raises on the empty min(); we warn and give NaN."""
    maps = np.zeros((2, 10, 10), dtype=np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[1, 2:5, 2:5] = True
    maps[:, :, :5] = 1.0
    with pytest.warns(UserWarning, match="no threshold of the official 200-step grid reaches FPR < 0.3"):
        assert math.isnan(M.aupro_official(maps, masks, device="cpu"))
    labels = np.array([0, 1])
    with pytest.warns(UserWarning, match="aupro_official undefined"):
        res = M.evaluate(np.array([0.1, 0.9]), labels, maps, masks, ["a", "a"], device="cpu")
    assert math.isnan(res["per_category"]["a"]["aupro_official"]) and math.isnan(res["mean"]["aupro_official"])
    assert not math.isnan(res["per_category"]["a"]["aupro"])


def test_official_reproduction_with_sigma_4() -> None:
    """The official code smooths float32 maps with sigma 4, then cal_pro_score; evaluate
    reports it as aupro_official beside the exact aupro, whatever --aupro names."""
    maps, masks = make_set(8, k=4, size=40)
    smoothed = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in maps])
    labels = masks.reshape(len(masks), -1).any(1)
    scores = maps.reshape(len(maps), -1).max(1)
    for variant in ("mvtec", "official", "anomalyclip"):
        res = M.evaluate(
            scores, labels, maps, masks, ["a"] * len(maps), aupro_variant=variant, smoothing_sigma=4, device="cpu"
        )
        got = res["per_category"]["a"]
        assert got["aupro_official"] == pytest.approx(slow_aupro_official(smoothed, masks), abs=1e-6)
        assert got["aupro"] == pytest.approx(slow_aupro_mvtec(smoothed, masks), abs=1e-6)
        assert res["mean"]["aupro_official"] == got["aupro_official"]
        assert res["settings"]["aupro_variant"] == ("mvtec" if variant == "mvtec" else "official")
    assert res["settings"]["smoothing_sigma"] == 4


def test_sort_path_in_parallel_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accumulators, "_PARALLEL_SORT_MIN", 1)
    monkeypatch.setattr(accumulators, "_n_workers", lambda: 3)
    monkeypatch.setattr(pixels, "_takes_two_passes", lambda *a: False)  # the smoothed / CUDA path, on CPU
    maps, masks = make_set(9, levels=7)
    s = M.summarise_pixels(maps, masks, device="cpu")
    assert s.path == "sort:float32" and len(s.neg_cdf.parts) == 3
    assert pixel_auroc_from(s)[0] == pytest.approx(sk_pixel_auroc(maps, masks), abs=1e-9)
    assert aupro_from(s, 0.3)[0] == pytest.approx(slow_aupro_mvtec(maps, masks), abs=1e-9)
    assert aupro_official_from(s, 0.3)[0] == pytest.approx(slow_aupro_official(maps, masks), abs=1e-9)


def _sort_path_summary(
    monkeypatch: pytest.MonkeyPatch, maps: np.ndarray, masks: np.ndarray, **kwargs: object
) -> M.PixelSummary:
    with monkeypatch.context() as m:
        m.setattr(pixels, "_takes_two_passes", lambda *a: False)
        return M.summarise_pixels(maps, masks, device="cpu", **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("levels", [None, 6])
def test_two_pass_path_equals_the_sort_path_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, dtype: type, levels: int | None
) -> None:
    """Several chunks, a buffer of a few values (many flushes, the last one partial), parallel
    parts, ties between normal and anomalous pixels (levels): every count the metrics read and
    every metric equal the one-pass sort path's exactly, and sklearn / the slow loops."""
    maps, masks = make_set(12, k=7, size=18, levels=levels)
    maps = (maps * 40).astype(dtype)  # int32: integer maps, cast to float32
    monkeypatch.setattr(pixels, "_CPU_CHUNK_PIXELS", 2 * 18 * 18)
    monkeypatch.setattr(two_pass, "_MIN_BUFFER", 37)
    monkeypatch.setattr(two_pass, "_BUFFER_PER_QUERY", 0)
    monkeypatch.setattr(accumulators, "_PARALLEL_SORT_MIN", 1)
    monkeypatch.setattr(accumulators, "_n_workers", lambda: 2)
    s = M.summarise_pixels(maps, masks, device="cpu")
    ref = _sort_path_summary(monkeypatch, maps, masks)
    assert s.path.startswith("two-pass:") and ref.path.startswith("sort:")
    grid = M.official_thresholds(ref.vmin, ref.vmax, ref.dtype)
    for q in (ref.pos_values, grid):
        assert np.array_equal(s.neg_cdf.count_lt(q), ref.neg_cdf.count_lt(q))
        assert np.array_equal(s.neg_cdf.count_le(q), ref.neg_cdf.count_le(q))
    assert (s.n_neg, s.n_pos, s.n_components, s.vmin, s.vmax, s.dtype) == (
        ref.n_neg,
        ref.n_pos,
        ref.n_components,
        ref.vmin,
        ref.vmax,
        ref.dtype,
    )
    assert pixel_auroc_from(s) == pixel_auroc_from(ref)
    assert aupro_from(s) == aupro_from(ref) and aupro_official_from(s) == aupro_official_from(ref)
    assert pixel_auroc_from(s)[0] == pytest.approx(sk_pixel_auroc(maps, masks), abs=1e-12)
    assert aupro_from(s)[0] == pytest.approx(slow_aupro_mvtec(maps, masks), abs=1e-9)


def test_two_pass_summary_answers_only_what_it_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, masks = make_set(13)
    s = M.summarise_pixels(maps, masks, device="cpu")
    with pytest.raises(SPGError, match="official_steps"):
        s.neg_cdf.count_le(np.array([0.123456789]))
    with pytest.raises(SPGError, match="official_steps"):
        aupro_official_from(s, 0.3, steps=50)
    s50 = M.summarise_pixels(maps, masks, device="cpu", official_steps=50)
    assert aupro_official_from(s50, 0.3, steps=50) == aupro_official_from(
        _sort_path_summary(monkeypatch, maps, masks), 0.3, steps=50
    )
    nan_normal = maps.copy()
    nan_normal[0, 0, 0] = np.nan  # image 0 has no anomalous pixel
    with pytest.raises(SPGError, match="NaN"):
        M.summarise_pixels(nan_normal, masks, device="cpu")


# --------------------------------------------------------------------------
# smoothing
# --------------------------------------------------------------------------


def test_smooth_maps_matches_scipy() -> None:
    rng = np.random.default_rng(10)
    maps = rng.random((3, 30, 17)).astype(np.float32)
    ref = np.stack([ndimage.gaussian_filter(m, sigma=4) for m in maps])
    np.testing.assert_allclose(M.smooth_maps(maps, 4), ref, atol=1e-6)
    assert M.smooth_maps(maps, 0) is maps
    out16 = M.smooth_maps(maps.astype(np.float16), 2.5)
    assert out16.dtype == np.float16
    # the torch implementation (used on CUDA) agrees with scipy, even when the
    # kernel is wider than the map (repeated reflection)
    t = _gaussian_torch(torch.from_numpy(maps), 4.0).numpy()
    np.testing.assert_allclose(t, ref, atol=1e-5)
    tiny = rng.random((2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        _gaussian_torch(torch.from_numpy(tiny), 3.0).numpy(),
        np.stack([ndimage.gaussian_filter(m, sigma=3) for m in tiny]),
        atol=1e-5,
    )
    assert isinstance(M.smooth_maps(torch.from_numpy(maps), 1.0), torch.Tensor)
    with pytest.raises(SPGError):
        M.smooth_maps(maps, -1)


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------


def _eval_set(seed: int = 11) -> tuple[np.ndarray, ...]:
    maps_a, masks_a = make_set(seed, k=6, size=16)
    maps_b, masks_b = make_set(seed + 1, k=5, size=16, levels=5)
    maps_c, _ = make_set(seed + 2, k=3, size=16)
    masks_c = np.zeros_like(maps_c, dtype=bool)  # no anomalous image
    maps = np.concatenate([maps_a, maps_b, maps_c]).astype(np.float16)
    masks = np.concatenate([masks_a, masks_b, masks_c])
    cats = np.array(["a"] * 6 + ["b"] * 5 + ["c"] * 3)
    order = np.random.default_rng(seed).permutation(len(cats))  # interleave categories
    labels = masks.reshape(len(masks), -1).any(1)
    scores = maps.reshape(len(maps), -1).astype(np.float64).max(1)
    return scores[order], labels[order], maps[order], masks[order], cats[order]


def test_evaluate_per_category_and_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pixels, "_CPU_CHUNK_PIXELS", 600)  # several chunks per category
    scores, labels, maps, masks, cats = _eval_set()
    with pytest.warns(UserWarning, match="category 'c'"):
        res = M.evaluate(scores, labels, maps, masks, cats, device="cpu")
    assert set(res) == {"mean", "per_category", "settings", "warnings"}
    for c in ("a", "b"):
        sel = cats == c
        got = res["per_category"][c]
        assert got["image_auroc"] == pytest.approx(roc_auc_score(labels[sel], scores[sel]), abs=1e-6)
        assert got["image_ap"] == pytest.approx(average_precision_score(labels[sel], scores[sel]), abs=1e-6)
        assert got["pixel_auroc"] == pytest.approx(sk_pixel_auroc(maps[sel], masks[sel]), abs=1e-6)
        assert got["aupro"] == pytest.approx(slow_aupro_mvtec(maps[sel], masks[sel]), abs=1e-3)
        official = slow_aupro_official(maps[sel], masks[sel])
        assert got["aupro_official"] == pytest.approx(official, abs=1e-9, nan_ok=True)
    c = res["per_category"]["c"]
    assert all(math.isnan(v) for v in c.values())
    for key in M.METRIC_KEYS:
        want = np.nanmean([res["per_category"][x][key] for x in ("a", "b")])  # b's official AUPRO is NaN
        assert res["mean"][key] == pytest.approx(want, abs=1e-12)
        assert 0.0 <= res["mean"][key] <= 1.0
    assert any("skips" in w and "c" in w for w in res["warnings"])
    st = res["settings"]
    for key in ("aupro_variant", "max_fpr", "smoothing_sigma", "eval_resolution", "connectivity"):
        assert key in st
    assert st["connectivity"] == 8 and st["exact_path"] == ["histogram:float16"]


def test_evaluate_no_normal_image_keeps_pixel_metrics() -> None:
    maps, masks = make_set(12, k=4)
    masks[0, 0, 0] = True  # every image anomalous
    labels = np.ones(4, dtype=bool)
    with pytest.warns(UserWarning, match="image_auroc undefined"):
        res = M.evaluate(np.arange(4.0), labels, maps, masks, ["x"] * 4, device="cpu")
    got = res["per_category"]["x"]
    assert math.isnan(got["image_auroc"]) and got["image_ap"] == pytest.approx(1.0)
    assert got["pixel_auroc"] == pytest.approx(sk_pixel_auroc(maps, masks), abs=1e-6)
    assert math.isnan(res["mean"]["image_auroc"])


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------


def test_bad_inputs_raise_spg_error() -> None:
    maps, masks = make_set(13, k=3)
    with pytest.raises(SPGError, match="does not match"):
        M.pixel_auroc(maps, masks[:, :-1])
    with pytest.raises(SPGError, match=r"\[K, H, W\]"):
        M.aupro(maps[0], masks[0])
    with pytest.raises(SPGError, match="0 \\(normal\\) or 1"):
        M.pixel_auroc(maps, masks * 0.5)
    with pytest.raises(SPGError, match="variant"):
        M.evaluate(np.zeros(3), [0, 1, 1], maps, masks, ["a"] * 3, aupro_variant="fast")
    with pytest.raises(SPGError, match="max_fpr"):
        M.aupro(maps, masks, max_fpr=0)
    for dtype in DTYPES:
        bad = maps.astype(dtype)
        bad[1, 2, 3] = np.nan
        with pytest.raises(SPGError, match="NaN"):
            M.pixel_auroc(bad, masks, device="cpu")
    with pytest.raises(SPGError, match="labels"):
        M.image_auroc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(SPGError, match="0 \\(normal\\) or 1"):
        M.image_auroc([0.1, 0.2], [0, 2])
    with pytest.raises(SPGError, match="NaN"):
        M.image_ap([0.1, float("nan")], [0, 1])
    scores = np.zeros(3)
    with pytest.raises(SPGError, match="categories"):
        M.evaluate(scores, [0, 1, 1], maps, masks, ["a", "b"], device="cpu")
    with pytest.raises(SPGError, match="maps hold"):
        M.evaluate(np.zeros(2), [0, 1], maps, masks, ["a", "b"], device="cpu")


# --------------------------------------------------------------------------
# CUDA (runs where a GPU is present)
# --------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_cuda_matches_cpu(dtype: type) -> None:
    scores, labels, maps, masks, cats = _eval_set(14)
    maps = maps.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = M.evaluate(scores, labels, maps, masks, cats, device="cpu")
        gpu = M.evaluate(scores, labels, maps, masks, cats, device="cuda")
        gpu_t = M.evaluate(scores, labels, torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda(), cats)
        for variant in M.AUPRO_VARIANTS:
            a = M.evaluate(scores, labels, maps, masks, cats, device="cpu", aupro_variant=variant, smoothing_sigma=2)
            b = M.evaluate(scores, labels, maps, masks, cats, device="cuda", aupro_variant=variant, smoothing_sigma=2)
            np.testing.assert_allclose(a["mean"]["aupro"], b["mean"]["aupro"], atol=2e-3)
    for res in (gpu, gpu_t):
        for c, vals in cpu["per_category"].items():
            for k, v in vals.items():
                assert res["per_category"][c][k] == pytest.approx(v, abs=1e-9, nan_ok=True)
    assert gpu["settings"]["device"].startswith("cuda")
