"""The official SPG AUPRO's threshold grid (riips/SPG ``cal_pro_score``), in one home.

:func:`.aupro.aupro_official_from` evaluates the curve on it, and the two-pass float32
summary (:mod:`.two_pass`) counts normal pixels at it in advance.
"""

from __future__ import annotations

import math

import numpy as np

OFFICIAL_STEPS = 200
"""Thresholds of the official AUPRO grid (``max_step`` in riips/SPG ``cal_pro_score``)."""


def official_thresholds(vmin: float, vmax: float, dtype: str = "float32", steps: int = OFFICIAL_STEPS) -> np.ndarray:
    """The official grid ``np.arange(min, max, (max - min) / steps)``, float64 [~steps].

    ``min``, ``max`` and the step are computed in ``dtype`` (float32 unless the maps are
    float64), as numpy does on the official code's float32 maps."""
    ftype = np.float64 if dtype == "float64" else np.float32
    lo, hi = ftype(vmin), ftype(vmax)
    step = (hi - lo) / ftype(steps)
    if not hi > lo or not math.isfinite(float(hi - lo)) or not step > 0:
        return np.zeros(0)
    return np.arange(lo, hi, step).astype(np.float64)
