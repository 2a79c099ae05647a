"""The pixel summary: everything the pixel metrics need, in a few small arrays.

Every pixel metric is a function of

* the CDF of the normal pixels' values (how many are < v and <= v), and
* for each distinct value u taken by anomalous pixels: how many anomalous pixels
  take it and the sum of ``1 / |component|`` over them.

The PRO weight is what removes the per-component work: PRO(t) is ``sum over
anomalous pixels p with map >= t of 1 / (C * |component(p)|)``, so one weighted
histogram replaces one curve per component.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SPGError
from ._inputs import Array


class _HistCDF:
    """CDF of normal pixels from a histogram over distinct values."""

    def __init__(self, values: np.ndarray, counts: np.ndarray):
        keep = counts > 0
        self.values = values[keep]  # float64 [V] ascending
        self.cum = np.concatenate(([0], np.cumsum(counts[keep])))  # int64 [V + 1]

    def count_le(self, q: np.ndarray) -> np.ndarray:
        return self.cum[np.searchsorted(self.values, q, side="right")]

    def count_lt(self, q: np.ndarray) -> np.ndarray:
        return self.cum[np.searchsorted(self.values, q, side="left")]


def _floor_to_dtype(q: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Largest value of ``dtype`` <= q (float64 queries vs float32 data), and
    whether it equals q. Searching float64 queries in a float32 array would make
    numpy cast the whole array; rounding the queries instead is exact this way."""
    qd = q.astype(dtype)
    up = qd.astype(np.float64) > q
    qd[up] = np.nextafter(qd[up], dtype.type(-np.inf))
    return qd, qd.astype(np.float64) == q


class _SortedCDF:
    """CDF of normal pixels from sorted parts (numpy arrays or one torch tensor).

    The CDF of a union is the sum of the parts' CDFs, so the parts never need
    merging: they are sorted independently (in parallel on CPU).
    """

    def __init__(self, parts: list[Array]):
        self.parts = parts

    def _count(self, q: np.ndarray, inclusive: bool) -> np.ndarray:
        total = np.zeros(q.shape, dtype=np.int64)
        for part in self.parts:
            np_dtype = _numpy_dtype(part)
            qd, exact = _floor_to_dtype(q, np_dtype)
            # count(< q) = count(<= floor) when floor < q, else count(< floor).
            right = np.full(q.shape, True) if inclusive else ~exact
            for side, sel in (("right", right), ("left", ~right)):
                if not sel.any():
                    continue
                if isinstance(part, torch.Tensor):
                    qt = torch.from_numpy(np.ascontiguousarray(qd[sel])).to(part.device)
                    idx = torch.searchsorted(part, qt, right=(side == "right")).cpu().numpy()
                else:
                    idx = np.searchsorted(part, qd[sel], side=side)
                total[sel] += idx
        return total

    def count_le(self, q: np.ndarray) -> np.ndarray:
        return self._count(q, inclusive=True)

    def count_lt(self, q: np.ndarray) -> np.ndarray:
        return self._count(q, inclusive=False)


class _TabulatedCDF:
    """CDF of normal pixels counted in advance at a fixed set of query values.

    The two-pass path (:mod:`.two_pass`) knows every value a pixel metric asks about
    before it counts: the anomalous pixels' values and the official threshold grid.
    Any other query is an error, never a guess."""

    def __init__(self, queries: np.ndarray, lt: np.ndarray, le: np.ndarray):
        self.queries = queries  # float64 [Q] ascending, distinct
        self.lt, self.le = lt, le  # int64 [Q]: normal pixels < / <= each query

    def _rows(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        rows = np.minimum(np.searchsorted(self.queries, q), max(self.queries.size - 1, 0))
        if q.size and (self.queries.size == 0 or not np.array_equal(self.queries[rows], q)):
            raise SPGError(
                "this pixel summary counted normal pixels only at the anomalous values and "
                "the official 200-step grid; another query needs the maps again",
                fix="call summarise_pixels(..., official_steps=N) with the grid you evaluate",
            )
        return rows

    def count_le(self, q: np.ndarray) -> np.ndarray:
        return self.le[self._rows(q)]

    def count_lt(self, q: np.ndarray) -> np.ndarray:
        return self.lt[self._rows(q)]


def _numpy_dtype(a: Array) -> np.dtype:
    if isinstance(a, torch.Tensor):
        return torch.empty((), dtype=a.dtype).numpy().dtype
    return a.dtype


@dataclass
class PixelSummary:
    """Everything the pixel metrics need, computed in one pass over the maps.

    Attributes:
        n_neg / n_pos: normal / anomalous pixel counts.
        n_components: ground-truth connected components (8-connected).
        neg_cdf: counts of normal pixels < v and <= v for query values v.
        pos_values: float64 [J] distinct values of anomalous pixels, ascending.
        pos_counts: int64 [J] anomalous pixels per value.
        pos_weights: float64 [J] sum of 1 / |component| over those pixels.
        vmin / vmax: extreme map values over all pixels.
        path: which exact path built it ("histogram:float16", "sort:float32", ...).
        dtype: "float64" for float64 maps, else "float32": the precision the official
            AUPRO's threshold grid is computed in.
    """

    n_neg: int
    n_pos: int
    n_components: int
    neg_cdf: _HistCDF | _SortedCDF | _TabulatedCDF
    pos_values: np.ndarray
    pos_counts: np.ndarray
    pos_weights: np.ndarray
    vmin: float
    vmax: float
    path: str
    dtype: str = "float32"
