"""One streaming pass over the maps -> :class:`PixelSummary` (the entry every pixel metric uses).

The pass never holds a float64 copy of the maps: images are read in chunks
(~8 M pixels on CPU), their ground-truth components labelled on CPU with
``scipy.ndimage.label`` (once per image, on the bounding box of its anomalous
pixels), optionally smoothed, and fed to the accumulator of the maps' dtype
(see :mod:`.accumulators`). On CUDA the histogram and sort run with torch.
Unsmoothed 32/64-bit maps on CPU take two passes instead (:mod:`.two_pass`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import SPGError
from ._inputs import Array, _check_pixel_inputs, _code_kind, _is_16bit_float, metrics_device
from .accumulators import _HistogramAccumulator, _SortAccumulator
from .chunks import _component_weights, _map_chunk, _mask_chunk, _sort_dtype, _torch_dtype
from .official_grid import OFFICIAL_STEPS
from .smoothing import _smooth_chunk
from .summary import PixelSummary
from .two_pass import summarise_two_pass

_CPU_CHUNK_PIXELS = 1 << 23  # ~8 M pixels per chunk: bounded temporaries
_CUDA_CHUNK_PIXELS = 1 << 26


def _takes_two_passes(maps: Array, device: torch.device, smoothing_sigma: float) -> bool:
    """32/64-bit maps on CPU, unsmoothed: two passes (:mod:`.two_pass`), not the sort path's copy.
    (Smoothed maps would be smoothed twice; on CUDA the sort runs in device memory.)"""
    return not _is_16bit_float(maps) and device.type == "cpu" and smoothing_sigma == 0


def summarise_pixels(
    maps: Array,
    masks: Array,
    *,
    index: np.ndarray | None = None,
    smoothing_sigma: float = 0.0,
    device: str | torch.device | None = None,
    official_steps: int = OFFICIAL_STEPS,
    progress: Any = None,
) -> PixelSummary:
    """One streaming pass over ``maps[index]`` / ``masks[index]`` -> :class:`PixelSummary`.

    Args:
        maps: [K, H, W] real maps (numpy or torch, any device).
        masks: [K, H, W] 0/1 ground truth.
        index: int [k] images to use (default all), e.g. one category's.
        smoothing_sigma: Gaussian smoothing applied per chunk (0 = off).
        device: "cpu", "cuda" or None (CUDA when available).
        official_steps: the official AUPRO grid the summary must answer; only the two-pass
            path (32/64-bit maps on CPU, unsmoothed) counts at a fixed grid.
        progress: optional tqdm-like object; ``update(n_images)`` is called.
    """
    k, h, w = _check_pixel_inputs(maps, masks)
    dev = metrics_device(device)
    idx = np.arange(k) if index is None else np.asarray(index, dtype=np.int64)
    if idx.size == 0:
        raise SPGError("no images selected for pixel metrics", fix="pass a non-empty index")
    budget = _CUDA_CHUNK_PIXELS if dev.type == "cuda" else _CPU_CHUNK_PIXELS
    per_chunk = max(1, budget // (h * w))

    if _takes_two_passes(maps, dev, smoothing_sigma):
        return summarise_two_pass(
            maps, masks, idx, per_chunk, _sort_dtype(maps), official_steps=official_steps, progress=progress
        )
    cast: np.dtype | None = None
    if _is_16bit_float(maps):
        acc: _HistogramAccumulator | _SortAccumulator = _HistogramAccumulator(_code_kind(maps), dev)
    else:
        cast = _sort_dtype(maps)
        acc = _SortAccumulator(idx.size * h * w, _torch_dtype(cast) if dev.type == "cuda" else cast, dev)

    for start in range(0, idx.size, per_chunk):
        sel = idx[start : start + per_chunk]
        mask = _mask_chunk(masks, sel)
        pos_idx, weight, n_comp = _component_weights(mask)
        chunk = _map_chunk(maps, sel, dev, cast)
        if smoothing_sigma > 0:
            chunk = _smooth_chunk(chunk, smoothing_sigma, _code_kind(maps))
        if isinstance(acc, _HistogramAccumulator):
            acc.add(chunk, pos_idx, weight, n_comp)
        else:
            acc.add(chunk, mask, pos_idx, weight, n_comp)
        if progress is not None:
            progress.update(len(sel))
    if isinstance(acc, _HistogramAccumulator):
        return acc.finish()
    return acc.finish(str(cast))
