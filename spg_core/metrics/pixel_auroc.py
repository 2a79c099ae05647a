"""Pixel-level AUROC over every pixel of a set, exact with ties (sklearn's trapezoid)."""

from __future__ import annotations

import math
import warnings

import torch

from ._inputs import Array
from .image import _mann_whitney_auroc
from .pixels import summarise_pixels
from .summary import PixelSummary


def pixel_auroc_from(s: PixelSummary) -> tuple[float, str | None]:
    """Exact pixel AUROC from a summary: (value, None), or (NaN, why) when a class is missing.

    The Mann-Whitney statistic with half-counted ties, which equals sklearn's trapezoid
    over the ROC at every distinct threshold."""
    if s.n_pos == 0 or s.n_neg == 0:
        return math.nan, f"{s.n_pos} anomalous, {s.n_neg} normal pixels"
    lt = s.neg_cdf.count_lt(s.pos_values)
    le = s.neg_cdf.count_le(s.pos_values)
    return _mann_whitney_auroc(s.pos_counts, lt, le, s.n_pos, s.n_neg), None


def pixel_auroc(maps: Array, masks: Array, *, device: str | torch.device | None = None) -> float:
    """Exact pixel-level AUROC over all pixels of the set; equals sklearn's ``roc_auc_score``.

    Args:
        maps: [K, H, W] anomaly maps (float16 / bfloat16: histogram path;
            other dtypes: sort path; both exact).
        masks: [K, H, W] 0/1 ground truth.
        device: "cpu", "cuda" or None (CUDA when available).
    Returns:
        AUROC in [0, 1]; NaN (with a warning) when a class is missing.
    """
    value, reason = pixel_auroc_from(summarise_pixels(maps, masks, device=device))
    if reason:
        warnings.warn(f"pixel AUROC is undefined ({reason}); returning NaN", stacklevel=2)
    return value
