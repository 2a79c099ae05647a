"""The two-pass summary of 32- and 64-bit maps on CPU: exact, without a copy of every normal pixel.

A 32-bit map has too many possible values for the 16-bit path's one bin per bit pattern,
and the one-pass sort path keeps every normal pixel's value until the end, because any
anomalous value seen later may fall between any two of them. But every value a pixel metric
asks the normal pixels' CDF about is known after reading only the anomalous pixels: their
distinct values (pixel AUROC, exact AUPRO) and the official grid (from the set's min and
max). So:

* pass 1 reads the masks, labels their components and reads the maps at the anomalous
  pixels only, plus each chunk's min and max;
* pass 2 fills a buffer with every pixel's value, sorts it when full (in parallel parts)
  and adds to each query's counts (< q and <= q) with a binary search per query (two
  where pixels tie with it); the anomalous pixels' own counts are taken away at the end.

The buffer holds ``_BUFFER_PER_QUERY`` values per query (at least ``_MIN_BUFFER``), so the
extra memory grows with the anomalous pixels' distinct values, not with the set, and the
binary searches cost about ``1 / _BUFFER_PER_QUERY`` of a search per normal pixel. Counts
are integers from comparisons in the maps' own dtype: the same as the sort path's, bit for
bit. Smoothed maps stay on the sort path: its one smoothing pass is cheaper than two.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..errors import SPGError
from ._inputs import Array
from .accumulators import positive_runs, sort_in_parts
from .chunks import _component_weights, _map_chunk, _mask_chunk
from .official_grid import official_thresholds
from .summary import PixelSummary, _floor_to_dtype, _TabulatedCDF

_BUFFER_PER_QUERY = 16  # 1/16 search per pixel for 64 B per query; 4 saved 10 of 110 MiB for 15%
# more time (40 M genuine float32 pixels, shared 2-core VM)
_MIN_BUFFER = 1 << 22  # 16 MiB of float32: few flushes (few sorts) when anomalous values are few
_CPU = torch.device("cpu")


def _chunks(idx: np.ndarray, per_chunk: int) -> Iterator[np.ndarray]:
    for start in range(0, idx.size, per_chunk):
        yield idx[start : start + per_chunk]


class _QueryCounts:
    """Values < q and <= q for fixed queries q (float64 [Q] ascending), added up over
    batches of values of one dtype."""

    def __init__(self, queries: np.ndarray, dtype: np.dtype):
        self.queries = queries
        # v < q  <=>  v <= floor(q) when q is not a value of the dtype, else v < q.
        self.floor, self.exact = _floor_to_dtype(queries, dtype)
        self.lt = np.zeros(queries.size, dtype=np.int64)
        self.le = np.zeros(queries.size, dtype=np.int64)

    def _count(self, part: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Counts in the sorted ``part`` [n]: (values <= floor(q) int64 [Q], the queries where
        values < q is fewer, int64 [t], by how many, int64 [t])."""
        right = np.searchsorted(part, self.floor, side="right")
        # v < q differs from v <= floor(q) only where q is a value of the dtype that some v
        # equals: a second search there alone (rare in 32-bit maps).
        just_below = part[np.maximum(right, 1) - 1]
        tied = np.flatnonzero((just_below == self.floor) & self.exact & (right > 0))
        return right, tied, right[tied] - np.searchsorted(part, self.floor[tied], side="left")

    def add(self, values: np.ndarray) -> None:
        """Count ``values`` [n] (sorted here, in place)."""
        parts = sort_in_parts(values)
        if len(parts) > 1:
            with ThreadPoolExecutor(len(parts)) as pool:
                counted = list(pool.map(self._count, parts))
        else:
            counted = [self._count(p) for p in parts]
        for right, tied, ties in counted:  # summed here: threads must not share an array
            self.le += right
            self.lt += right
            self.lt[tied] -= ties


def summarise_two_pass(
    maps: Array,
    masks: Array,
    idx: np.ndarray,
    per_chunk: int,
    cast: np.dtype,
    *,
    official_steps: int,
    progress: Any = None,
) -> PixelSummary:
    """:class:`PixelSummary` of ``maps[idx]`` / ``masks[idx]`` ([K, H, W], CPU) in two passes.

    Args:
        idx: int [k] images to use; per_chunk: images read at a time.
        cast: the dtype values are compared in (the maps' own float dtype).
        official_steps: the official grid the summary can answer (see :mod:`.official_grid`).
        progress: optional tqdm-like object; ``update(n_images)`` is called in pass 2.
    """
    cpu = np.dtype(cast)
    pos_vals: list[np.ndarray] = []
    pos_w: list[np.ndarray] = []
    n_components, n_pixels, vmin, vmax = 0, 0, np.inf, -np.inf
    for sel in _chunks(idx, per_chunk):  # pass 1
        mask = _mask_chunk(masks, sel)
        pos_idx, weight, n_comp = _component_weights(mask)
        chunk = _map_chunk(maps, sel, _CPU, cpu)
        pos_vals.append(chunk.reshape(-1)[pos_idx])
        pos_w.append(weight)
        n_components += n_comp
        n_pixels += chunk.size
        lo, hi = float(chunk.min()), float(chunk.max())
        if np.isnan(lo) or np.isnan(hi):
            raise SPGError(
                "maps contain NaN values",
                fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating",
            )
        vmin, vmax = min(vmin, lo), max(vmax, hi)
    values, counts, weights = positive_runs(pos_vals, pos_w)
    del pos_vals, pos_w
    n_pos = int(counts.sum())
    n_neg = n_pixels - n_pos
    dtype_name = "float64" if cpu == np.float64 else "float32"
    grid = official_thresholds(vmin, vmax, dtype_name, official_steps)
    queries = np.unique(np.concatenate((values, grid)))
    counter = _QueryCounts(queries, cpu)

    # Pass 2 counts every pixel, then takes the anomalous ones away: plain copies, no mask.
    buffer = np.empty(min(n_pixels, max(_BUFFER_PER_QUERY * queries.size, _MIN_BUFFER)), dtype=cpu)
    fill = 0
    for sel in _chunks(idx, per_chunk):  # pass 2
        flat = _map_chunk(maps, sel, _CPU, cpu).reshape(-1)
        at = 0
        while at < flat.size:
            take = min(flat.size - at, buffer.size - fill)
            buffer[fill : fill + take] = flat[at : at + take]
            fill, at = fill + take, at + take
            if fill == buffer.size:
                counter.add(buffer)
                fill = 0
        if progress is not None:
            progress.update(len(sel))
    if fill:
        counter.add(buffer[:fill])
    # The anomalous values are queries themselves: their counts below / up to each query.
    at_query = np.zeros(queries.size, dtype=np.int64)
    at_query[np.searchsorted(queries, values)] = counts
    anomalous_le = np.cumsum(at_query)
    anomalous_lt = anomalous_le - at_query
    return PixelSummary(
        n_neg=n_neg,
        n_pos=n_pos,
        n_components=n_components,
        neg_cdf=_TabulatedCDF(queries, counter.lt - anomalous_lt, counter.le - anomalous_le),
        pos_values=values,
        pos_counts=counts,
        pos_weights=weights,
        vmin=vmin,
        vmax=vmax,
        path=f"two-pass:{cpu}",
        dtype=dtype_name,
    )
