"""AUPRO, the area under the per-region-overlap curve up to an FPR limit, in two definitions.

* :func:`aupro`, the exact MVTec AD definition. For every distinct map value t:
  FPR(t) = fraction of normal pixels (mask 0, over all images) with map >= t;
  PRO(t) = mean over all ground-truth connected components of the fraction of the
  component's pixels with map >= t. Components are 8-connected and never cross
  images. The curve starts at (0, 0), ends at (1, 1), is integrated with the
  trapezoid rule up to FPR = ``max_fpr`` (interpolated exactly there) and divided by
  ``max_fpr``. From the pixel summary the curve has two vertices per distinct
  anomalous value (the FPR only moves horizontally between them).
* :func:`aupro_official`, what the official SPG code computes (``cal_pro_score`` in
  riips/SPG ``src/metrics.py``, itself AnomalyCLIP's and cflow-ad's): thresholds
  ``np.arange(min, max, (max - min) / 200)`` over the set's map values (min and max
  taken in float32, as their float32 maps give them; the max excluded; rounding can
  give 201), a pixel is positive when map > threshold, 8-connected regions weighted
  equally, the points with FPR < ``max_fpr`` kept, their FPR min-max rescaled to
  [0, 1] and the trapezoid area taken. Where the official code raises (no threshold
  reaches FPR < ``max_fpr``, or only one does) this gives NaN with a warning.
  The official evaluation smooths maps with a Gaussian of sigma 4 first: smoothing is
  a separate option here (:func:`evaluate`'s ``smoothing_sigma``, :func:`smooth_maps`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..errors import SPGError
from ._inputs import Array
from .official_grid import OFFICIAL_STEPS, official_thresholds
from .pixels import summarise_pixels
from .summary import PixelSummary


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area of the polyline (x nondecreasing) from x[0] to ``x_max``,
    interpolating y linearly at exactly x_max (as the MVTec reference does)."""
    k = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    area = _trapezoid(x[:k], y[:k])
    if 0 < k < x.size and x[k - 1] < x_max:
        y_at = y[k - 1] + (y[k] - y[k - 1]) * (x_max - x[k - 1]) / (x[k] - x[k - 1])
        area += 0.5 * (y[k - 1] + y_at) * (x_max - x[k - 1])
    return area


def pro_curve(s: PixelSummary) -> tuple[np.ndarray, np.ndarray]:
    """The exact MVTec PRO curve as a polyline (FPR, PRO), float64 [2J + 2] each.

    Walking the distinct anomalous values u_J > ... > u_1 from the top: the
    curve runs horizontally (only normal pixels pass) to FPR(> u_j) at the
    previous PRO, then to (FPR(>= u_j), PRO(>= u_j)), diagonally when normal
    pixels tie with u_j. These are exactly the segments between the points at
    every distinct value of all pixels (collinear points dropped). Starts at
    (0, 0) and ends at (1, 1), as the MVTec reference curve.
    """
    n = float(s.n_neg)
    lt = s.neg_cdf.count_lt(s.pos_values)[::-1]
    le = s.neg_cdf.count_le(s.pos_values)[::-1]
    pro = np.minimum(np.cumsum(s.pos_weights[::-1]) / s.n_components, 1.0)
    x = np.empty(2 * pro.size + 2)
    y = np.empty_like(x)
    x[0], y[0], x[-1], y[-1] = 0.0, 0.0, 1.0, 1.0
    x[1:-1:2] = (n - le) / n
    y[1:-1:2] = np.concatenate(([0.0], pro[:-1]))
    x[2:-1:2] = (n - lt) / n
    y[2:-1:2] = pro
    return x, y


def _undefined(s: PixelSummary) -> str | None:
    if s.n_components == 0:
        return "no anomalous pixel"
    if s.n_neg == 0:
        return "no normal pixel"
    return None


def aupro_from(s: PixelSummary, max_fpr: float = 0.3) -> tuple[float, str | None]:
    """Exact MVTec AUPRO from a summary: (value, None) or (NaN, why)."""
    reason = _undefined(s)
    if reason:
        return math.nan, reason
    x, y = pro_curve(s)
    return _area_up_to(x, y, max_fpr) / max_fpr, None


def aupro_official_from(s: PixelSummary, max_fpr: float = 0.3, steps: int = OFFICIAL_STEPS) -> tuple[float, str | None]:
    """The official SPG AUPRO from a summary: (value, None) or (NaN, why)."""
    reason = _undefined(s)
    if reason:
        return math.nan, reason
    th = official_thresholds(s.vmin, s.vmax, s.dtype, steps)
    if th.size == 0:
        return math.nan, "constant map: the official threshold grid is empty"
    fpr = (s.n_neg - s.neg_cdf.count_le(th)) / float(s.n_neg)  # map > th
    cum_w = np.concatenate(([0.0], np.cumsum(s.pos_weights)))
    pro = (cum_w[-1] - cum_w[np.searchsorted(s.pos_values, th, side="right")]) / s.n_components
    keep = fpr < max_fpr
    f, p = fpr[keep][::-1], pro[keep][::-1]  # FPR ascending
    if f.size == 0:
        return math.nan, f"no threshold of the official {steps}-step grid reaches FPR < {max_fpr}"
    if f.size < 2 or f[-1] == f[0]:
        return math.nan, (f"fewer than two distinct FPR values below {max_fpr} on the official {steps}-step grid")
    f = (f - f[0]) / (f[-1] - f[0])
    return _trapezoid(f, p), None


def check_max_fpr(max_fpr: float) -> None:
    if not (isinstance(max_fpr, (int, float)) and 0.0 < max_fpr <= 1.0):
        raise SPGError(f"max_fpr must be in (0, 1], got {max_fpr!r}", fix="the usual value is 0.3")


def aupro(maps: Array, masks: Array, max_fpr: float = 0.3, *, device: str | torch.device | None = None) -> float:
    """Exact MVTec AD AUPRO up to ``max_fpr``, normalised to [0, 1] (see the module docstring).

    Args:
        maps: [K, H, W] anomaly maps.
        masks: [K, H, W] 0/1 ground truth; components are 8-connected.
        max_fpr: integration limit (0.3 in the literature).
        device: "cpu", "cuda" or None (CUDA when available).
    Returns:
        AUPRO in [0, 1]; NaN (with a warning) when undefined.
    """
    check_max_fpr(max_fpr)
    value, reason = aupro_from(summarise_pixels(maps, masks, device=device), max_fpr)
    if reason:
        warnings.warn(f"AUPRO is undefined ({reason}); returning NaN", stacklevel=2)
    return value


def aupro_official(
    maps: Array, masks: Array, max_fpr: float = 0.3, *, device: str | torch.device | None = None
) -> float:
    """The official SPG AUPRO (200-threshold grid, FPR rescaled; see the module docstring).

    Args:
        maps: [K, H, W] anomaly maps (smooth them first to reproduce the official numbers).
        masks: [K, H, W] 0/1 ground truth; regions are 8-connected.
        max_fpr: FPR limit of the kept points (0.3 officially).
        device: "cpu", "cuda" or None (CUDA when available).
    Returns:
        AUPRO in [0, 1]; NaN (with a warning) where the official code would raise.
    """
    check_max_fpr(max_fpr)
    value, reason = aupro_official_from(summarise_pixels(maps, masks, device=device), max_fpr)
    if reason:
        warnings.warn(f"official AUPRO is undefined ({reason}); returning NaN", stacklevel=2)
    return value
