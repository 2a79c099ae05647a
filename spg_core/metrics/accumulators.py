"""Streaming builders of a :class:`PixelSummary`, one per kind of map dtype.

* 16-bit maps (float16, bfloat16): the *histogram path*, a 65536-bin ``bincount``
  of the raw bit patterns, ordered afterwards by the value each pattern encodes.
  Exact, O(pixels), ~10 MB of extra memory whatever the set size.
* other maps on CUDA, or smoothed: the *sort path*, normal pixels' values copied once
  (same dtype, one buffer) and sorted in place in as many parts as there are CPU cores;
  the CDF sums ``searchsorted`` over parts. Anomalous pixels (a few percent) are sorted
  with their weights. Exact for the dtype given, O(n log n), one copy of the normal
  pixels. Unsmoothed 32/64-bit maps on CPU skip the copy in two passes (:mod:`.two_pass`).
  (Why 32-bit maps get no histogram path: benchmarks/RESULTS.md, "Metrics".)

On CUDA the same passes run with torch (``torch.bincount``, ``torch.sort``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..errors import SPGError
from ._inputs import Array
from .summary import PixelSummary, _HistCDF, _SortedCDF

_N_CODES = 1 << 16  # 16-bit maps: one bin per bit pattern
_PARALLEL_SORT_MIN = 1 << 22  # below this a single sort beats thread start-up


def _bit_codes(chunk: Array) -> Array:
    """16-bit float chunk -> flat bit-pattern codes in [0, 65536).

    numpy: uint16 (a view, no copy); torch: int32 on the chunk's device.
    """
    if isinstance(chunk, torch.Tensor):
        return chunk.reshape(-1).view(torch.int16).to(torch.int32) & 0xFFFF
    return chunk.reshape(-1).view(np.uint16)


@lru_cache(maxsize=2)
def _code_table(kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode all 65536 bit patterns of a 16-bit float type, in value order.

    Returns:
        order: int64 [V'] non-NaN codes sorted by value,
        group: int64 [V'] index of each sorted code's distinct value (+0 and -0
               are one value, as sklearn's comparisons see them),
        values: float64 [V] distinct values ascending,
        nan_codes: int64 codes that encode NaN.
    """
    codes = np.arange(_N_CODES, dtype=np.uint32)
    with np.errstate(invalid="ignore"):  # signalling-NaN patterns
        if kind == "bfloat16":
            decoded = (codes << 16).view(np.float32).astype(np.float64)
        else:
            decoded = codes.astype(np.uint16).view(np.float16).astype(np.float64)
    nan = np.isnan(decoded)
    valid = np.flatnonzero(~nan)
    order = valid[np.argsort(decoded[valid], kind="stable")]
    values, group = np.unique(decoded[order], return_inverse=True)
    return order, group, values, np.flatnonzero(nan)


class _HistogramAccumulator:
    """Streaming summary of 16-bit float maps: 65536-bin histograms of bit patterns."""

    def __init__(self, kind: str, device: torch.device):
        self.kind = kind
        self.device = device
        self.all = np.zeros(_N_CODES, dtype=np.int64)
        self.all_t = (
            torch.zeros(_N_CODES, dtype=torch.int64, device=device) if device.type == "cuda" else None
        )  # stays on the GPU
        self.pos = np.zeros(_N_CODES, dtype=np.int64)
        self.pro = np.zeros(_N_CODES, dtype=np.float64)
        self.n_components = 0

    def add(self, chunk: Array, pos_idx: np.ndarray, weight: np.ndarray, n_components: int) -> None:
        codes = _bit_codes(chunk)
        if isinstance(codes, torch.Tensor):
            self.all_t += torch.bincount(codes, minlength=_N_CODES)
            pos_codes = codes[torch.from_numpy(pos_idx).to(codes.device)].cpu().numpy()
        else:
            # per image: bincount casts to intp internally, and a cache-sized
            # temporary is ~2x faster than one huge one.
            per_image = chunk.shape[1] * chunk.shape[2]
            for start in range(0, codes.size, per_image):
                self.all += np.bincount(codes[start : start + per_image], minlength=_N_CODES)
            pos_codes = codes[pos_idx]
        if pos_codes.size:
            self.pos += np.bincount(pos_codes, minlength=_N_CODES)
            self.pro += np.bincount(pos_codes, weights=weight, minlength=_N_CODES)
        self.n_components += n_components

    def finish(self) -> PixelSummary:
        if self.all_t is not None:
            self.all += self.all_t.cpu().numpy()
        order, group, values, nan_codes = _code_table(self.kind)
        n_nan = int(self.all[nan_codes].sum())
        if n_nan:
            raise SPGError(
                f"maps contain {n_nan} NaN values",
                fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating",
            )
        n_vals = values.size

        def merged(h: np.ndarray) -> np.ndarray:  # per code -> per distinct value
            return np.bincount(group, weights=h[order], minlength=n_vals)

        all_v = np.rint(merged(self.all)).astype(np.int64)  # counts < 2^53: exact in float64
        pos_v = np.rint(merged(self.pos)).astype(np.int64)
        pro_v = merged(self.pro)
        neg_v = all_v - pos_v
        present = np.flatnonzero(all_v)
        has_pos = pos_v > 0
        return PixelSummary(
            n_neg=int(neg_v.sum()),
            n_pos=int(pos_v.sum()),
            n_components=self.n_components,
            neg_cdf=_HistCDF(values, neg_v),
            pos_values=values[has_pos],
            pos_counts=pos_v[has_pos],
            pos_weights=pro_v[has_pos],
            vmin=float(values[present[0]]),
            vmax=float(values[present[-1]]),
            path=f"histogram:{self.kind}",
        )


def _n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def sort_in_parts(data: np.ndarray) -> list[np.ndarray]:
    """Sort ``data`` [n] in place as contiguous parts, one per CPU core, in parallel (numpy
    releases the GIL): the sorted parts (views of ``data``), no merge (CDFs of parts add up)."""
    n = _n_workers() if data.size >= _PARALLEL_SORT_MIN else 1
    bounds = np.linspace(0, data.size, n + 1).astype(np.int64)
    parts = [data[bounds[i] : bounds[i + 1]] for i in range(n) if bounds[i + 1] > bounds[i]]
    if len(parts) > 1:
        with ThreadPoolExecutor(len(parts)) as pool:
            list(pool.map(np.ndarray.sort, parts))
    elif parts:
        parts[0].sort()
    return parts


class _SortAccumulator:
    """Streaming summary of maps of any other dtype: exact, via sorting.

    Normal pixels' values go into one preallocated buffer of the maps' dtype
    (np.empty pages cost memory only once written); anomalous pixels' values
    and weights are kept separately (they are few).
    """

    def __init__(self, capacity: int, dtype: Any, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.buf = torch.empty(capacity, dtype=dtype, device=device)
        else:
            self.buf = np.empty(capacity, dtype=dtype)
        self.fill = 0
        self.pos_vals: list[np.ndarray] = []
        self.pos_w: list[np.ndarray] = []
        self.n_components = 0

    def add(self, chunk: Array, mask: np.ndarray, pos_idx: np.ndarray, weight: np.ndarray, n_components: int) -> None:
        flat = chunk.reshape(-1)
        n_neg = flat.shape[0] - pos_idx.size
        dest = self.buf[self.fill : self.fill + n_neg]
        if isinstance(flat, torch.Tensor):
            normal = torch.from_numpy(~mask.reshape(-1)).to(flat.device)
            dest.copy_(flat[normal])
            self.pos_vals.append(flat[torch.from_numpy(pos_idx).to(flat.device)].cpu().numpy())
        else:
            # image by image: the boolean-index temporary stays cache-sized
            normal = ~mask.reshape(mask.shape[0], -1)
            rows = flat.reshape(mask.shape[0], -1)
            at = 0
            for i in range(rows.shape[0]):
                values = rows[i][normal[i]]
                dest[at : at + values.size] = values
                at += values.size
            self.pos_vals.append(flat[pos_idx])
        self.fill += n_neg
        self.pos_w.append(weight)
        self.n_components += n_components

    def _sorted_parts(self) -> list[Array]:
        data = self.buf[: self.fill]
        if isinstance(data, torch.Tensor):
            return [torch.sort(data).values] if self.fill else []
        return sort_in_parts(data)

    def finish(self, dtype_name: str) -> PixelSummary:
        parts = self._sorted_parts()
        # NaN sorts last in numpy and torch: checking each part's end is enough.
        if any(bool(np.isnan(float(p[-1]))) for p in parts):
            raise SPGError(
                "maps contain NaN values",
                fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating",
            )
        values, counts, weights = positive_runs(self.pos_vals, self.pos_w)
        extremes = [float(p[0]) for p in parts] + [float(p[-1]) for p in parts]
        if values.size:
            extremes += [float(values[0]), float(values[-1])]
        return PixelSummary(
            n_neg=self.fill,
            n_pos=int(counts.sum()),
            n_components=self.n_components,
            neg_cdf=_SortedCDF(parts),
            pos_values=values,
            pos_counts=counts,
            pos_weights=weights,
            vmin=min(extremes),
            vmax=max(extremes),
            path=f"sort:{dtype_name}",
            dtype="float64" if dtype_name == "float64" else "float32",
        )


def positive_runs(pos_vals: list[np.ndarray], pos_w: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anomalous pixels' values and PRO weights, gathered per chunk -> the summary's
    (distinct values float64 [J] ascending, counts int64 [J], weight sums float64 [J])."""
    pos = np.concatenate(pos_vals) if pos_vals else np.zeros(0)
    w = np.concatenate(pos_w) if pos_w else np.zeros(0)
    if pos.size and np.isnan(pos.astype(np.float64)).any():
        raise SPGError(
            "maps contain NaN values", fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating"
        )
    order = np.argsort(pos, kind="stable")
    return _run_lengths(pos[order].astype(np.float64), w[order])


def _run_lengths(sorted_vals: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal neighbours of a sorted array: (distinct values, counts, weight sums)."""
    if sorted_vals.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)
    # compare neighbours (not diff: inf - inf is NaN); -0.0 == 0.0 as in sklearn
    starts = np.flatnonzero(np.concatenate(([True], sorted_vals[1:] != sorted_vals[:-1])))
    counts = np.diff(np.append(starts, sorted_vals.size))
    return sorted_vals[starts], counts.astype(np.int64), np.add.reduceat(weights, starts)
