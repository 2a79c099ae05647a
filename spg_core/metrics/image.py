"""Image-level metrics: AUROC and average precision, equal to sklearn's, ties included."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from ._inputs import Array, _labels_1d, _scores_1d


def _tie_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct score (ascending): (normal count, anomalous count), int64 [V] each."""
    _, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse[labels], minlength=inverse.max() + 1)
    allc = np.bincount(inverse, minlength=inverse.max() + 1)
    return allc - pos, pos


def _mann_whitney_auroc(pos: np.ndarray, neg_lt: np.ndarray, neg_le: np.ndarray, n_pos: int, n_neg: int) -> float:
    """AUROC = P(score_pos > score_neg) + 0.5 P(tie).

    ``pos[j]`` anomalous samples share a value with ``neg_lt[j]`` normal ones
    strictly below and ``neg_le[j]`` at or below it. This equals sklearn's
    trapezoid over the ROC at all distinct thresholds (ties -> diagonal).
    """
    u = np.dot(pos.astype(np.float64), (neg_lt + neg_le).astype(np.float64)) * 0.5
    return float(u / (float(n_pos) * float(n_neg)))


def image_auroc(scores: Array | Sequence[float], labels: Array | Sequence[int]) -> float:
    """Image-level AUROC; equals ``sklearn.metrics.roc_auc_score``.

    Args:
        scores: [N] anomaly scores (higher = more anomalous).
        labels: [N] 0 normal / 1 anomalous.
    Returns:
        AUROC in [0, 1], or NaN (with a warning) when only one class is present.
    """
    value, reason = image_auroc_checked(_scores_1d(scores), _labels_1d(labels, len(scores)))
    if reason:
        warnings.warn(f"image AUROC is undefined ({reason}); returning NaN", stacklevel=2)
    return value


def image_auroc_checked(s: np.ndarray, y: np.ndarray) -> tuple[float, str | None]:
    """:func:`image_auroc` of validated float64 scores ``[N]`` and bool labels ``[N]``,
    without warning: (value, None), or (NaN, why) when only one class is present."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan, f"{n_pos} anomalous, {n_neg} normal images"
    neg, pos = _tie_counts(s, y)
    neg_lt = np.cumsum(neg) - neg
    return _mann_whitney_auroc(pos, neg_lt, neg_lt + neg, n_pos, n_neg), None


def image_ap(scores: Array | Sequence[float], labels: Array | Sequence[int]) -> float:
    """Image-level average precision; equals ``sklearn.metrics.average_precision_score``.

    AP = sum_k (R_k - R_{k-1}) P_k over distinct thresholds, high to low (no
    interpolation).

    Args:
        scores: [N] anomaly scores.
        labels: [N] 0 normal / 1 anomalous.
    Returns:
        AP in [0, 1], or NaN (with a warning) when there is no anomalous image.
    """
    value, reason = image_ap_checked(_scores_1d(scores), _labels_1d(labels, len(scores)))
    if reason:
        warnings.warn(f"image AP is undefined ({reason}); returning NaN", stacklevel=2)
    return value


def image_ap_checked(s: np.ndarray, y: np.ndarray) -> tuple[float, str | None]:
    """:func:`image_ap` of validated scores and labels, without warning: (value, None), or
    (NaN, why) when there is no anomalous image."""
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan, "no anomalous image"
    neg, pos = _tie_counts(s, y)
    tps = np.cumsum(pos[::-1]).astype(np.float64)
    fps = np.cumsum(neg[::-1]).astype(np.float64)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision)), None
