"""Reading maps and masks a chunk of images at a time, and labelling ground-truth components."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import ndimage

from ..errors import SPGError
from ._inputs import Array, _to_numpy
from .summary import _numpy_dtype

CONNECTIVITY = 8
"""Ground-truth components are 8-connected (3x3 structuring element), as in the
MVTec AD reference evaluation and skimage's default used by the official SPG code."""

_STRUCTURE_2D = np.ones((3, 3), dtype=bool)  # 8-connectivity


def _mask_chunk(masks: Array, idx: np.ndarray) -> np.ndarray:
    """masks[idx] -> CPU bool [k, H, W]; non-binary masks are an error."""
    m = _to_numpy(_take(masks, idx), "masks")
    if m.dtype == bool:
        return m
    binary = (m == 0) | (m == 1)
    if not binary.all():
        bad = np.unique(m[~binary])[:5]
        raise SPGError(
            f"masks must be 0 (normal) or 1 (anomalous), found values {bad.tolist()}",
            fix="binarise the masks first, e.g. masks > 0.5",
        )
    return m != 0


def _component_weights(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Label 8-connected components of a chunk of masks.

    Args:
        mask: bool [k, H, W].
    Returns:
        pos_idx: int64 [P] flat indices of anomalous pixels in the chunk,
        weight: float64 [P] 1 / |component| of each of those pixels,
        n_components: number of components in the chunk.
    """
    pos_idx = np.flatnonzero(mask)
    weight = np.empty(pos_idx.size)
    if pos_idx.size == 0:
        return pos_idx, weight, 0
    _, h, w = mask.shape
    image, rest = np.divmod(pos_idx, h * w)
    row, col = np.divmod(rest, w)
    # Label only each image's bounding box of anomalous pixels: defects are
    # small, so this is ~10x cheaper than labelling whole images, and a
    # contiguous crop keeps connectivity exact.
    bounds = np.flatnonzero(np.diff(image, prepend=-1, append=image[-1] + 1))
    n_total = 0
    for a, b in itertools.pairwise(bounds):
        r, c = row[a:b], col[a:b]
        r0, c0 = r.min(), c.min()
        crop = mask[image[a], r0 : r.max() + 1, c0 : c.max() + 1]
        labels, n = ndimage.label(crop, structure=_STRUCTURE_2D)
        lab = labels[r - r0, c - c0]
        sizes = np.bincount(lab, minlength=n + 1)
        sizes[0] = 1  # background: never indexed
        weight[a:b] = 1.0 / sizes[lab]
        n_total += n
    return pos_idx, weight, n_total


def _take(a: Array, idx: np.ndarray) -> Array:
    """a[idx] along axis 0: a view for a contiguous run, a copy of the chunk otherwise."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size and np.all(np.diff(idx) == 1):
        return a[int(idx[0]) : int(idx[-1]) + 1]
    if isinstance(a, torch.Tensor):
        return a[torch.as_tensor(idx, device=a.device)]
    return a[idx]


def _sort_dtype(maps: Array) -> np.dtype:
    """dtype the sort path works in: the maps' own float dtype; integer and
    bool maps become float32 (<= 16 bits) or float64, both exact."""
    dt = _numpy_dtype(maps)
    if np.issubdtype(dt, np.floating):
        return dt
    return np.dtype(np.float32) if dt.itemsize <= 2 else np.dtype(np.float64)


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=dt)).dtype


def _map_chunk(maps: Array, idx: np.ndarray, device: torch.device, cast: np.dtype | None = None) -> Array:
    """maps[idx] on the compute device: numpy on CPU, a torch tensor on CUDA,
    converted to ``cast`` when given (the sort path's dtype)."""
    chunk = _take(maps, idx)
    if device.type == "cuda":
        t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(chunk))
        t = t.to(device, non_blocking=True)
        return t if cast is None else t.to(_torch_dtype(cast))
    if isinstance(chunk, torch.Tensor):
        chunk = chunk.detach().cpu()
        if chunk.dtype in (torch.float16, torch.bfloat16):
            # keep the exact 16-bit pattern (numpy has no bfloat16)
            return chunk.contiguous().view(torch.int16).numpy().view(np.uint16)
        chunk = chunk.numpy()
    return chunk if cast is None else chunk.astype(cast, copy=False)
