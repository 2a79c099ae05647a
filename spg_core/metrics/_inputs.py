"""Input conversion and validation shared by every metric (numpy or torch in, numpy out)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..devices import resolve_device
from ..errors import SPGError

Array = np.ndarray | torch.Tensor


def _to_numpy(x: Array | Sequence[Any], name: str) -> np.ndarray:
    """Any array-like -> numpy (CPU, zero-copy where possible)."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise SPGError(
            f"{name} could not be read as an array ({exc})", fix=f"pass {name} as a numpy array or torch tensor"
        ) from exc


def _scores_1d(scores: Array | Sequence[float], name: str = "scores") -> np.ndarray:
    """Validate image scores: 1-D, real, finite -> float64 [N]."""
    s = _to_numpy(scores, name)
    if s.ndim != 1:
        raise SPGError(
            f"{name} must be 1-D [N], got shape {tuple(s.shape)}", fix=f"flatten {name} to one score per image"
        )
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool) or np.iscomplexobj(s):
        raise SPGError(f"{name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise SPGError(
            f"{name} contains NaN or inf ({int((~np.isfinite(s)).sum())} values)",
            fix="check the model output; replace non-finite scores before evaluating",
        )
    return s


def _labels_1d(labels: Array | Sequence[int], n: int, name: str = "labels") -> np.ndarray:
    """Validate binary image labels -> bool [N]."""
    y = _to_numpy(labels, name)
    if y.shape != (n,):
        raise SPGError(
            f"{name} has shape {tuple(y.shape)} but the scores have shape ({n},)", fix="pass one label per image score"
        )
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
            raise SPGError(
                f"{name} must be 0 (normal) or 1 (anomalous), found {bad.tolist()}",
                fix=f"binarise {name}, e.g. labels > 0",
            )
        y = y.astype(bool)
    return y


def _check_pixel_inputs(maps: Array, masks: Array) -> tuple[int, int, int]:
    """Validate maps [K, H, W] (real) and masks of the same shape; return (K, H, W)."""
    for name, a in (("maps", maps), ("masks", masks)):
        if not isinstance(a, (np.ndarray, torch.Tensor)):
            raise SPGError(
                f"{name} must be a numpy array or torch tensor, got {type(a).__name__}",
                fix=f"stack {name} into one array of shape [K, H, W]",
            )
    if maps.ndim != 3:
        raise SPGError(
            f"maps must have shape [K, H, W], got {tuple(maps.shape)}",
            fix="add a leading axis for a single map (maps[None]) or squeeze channel axes",
        )
    if tuple(masks.shape) != tuple(maps.shape):
        raise SPGError(
            f"masks shape {tuple(masks.shape)} does not match maps shape {tuple(maps.shape)}",
            fix="resize maps or masks to the same [K, H, W] (eval_resolution) first",
        )
    if _is_complex_or_nonnumeric(maps):
        raise SPGError(f"maps must be real-valued, got dtype {maps.dtype}")
    k, h, w = (int(d) for d in maps.shape)
    if k == 0 or h == 0 or w == 0:
        raise SPGError(f"maps are empty (shape {tuple(maps.shape)})", fix="evaluate at least one map")
    return k, h, w


def _is_complex_or_nonnumeric(a: Array) -> bool:
    if isinstance(a, torch.Tensor):
        return a.is_complex()
    return not (np.issubdtype(a.dtype, np.number) or a.dtype == bool) or np.iscomplexobj(a)


def metrics_device(device: str | torch.device | None) -> torch.device:
    """The device the pixel passes run on: None/"auto" -> CUDA when available; cpu or cuda only."""
    dev = resolve_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise SPGError(f"device {str(device)!r} is not supported for metrics", fix="use 'cpu' or 'cuda'")
    return dev


def _is_16bit_float(maps: Array) -> bool:
    if isinstance(maps, torch.Tensor):
        return maps.dtype in (torch.float16, torch.bfloat16)
    return maps.dtype == np.float16


def _code_kind(maps: Array) -> str:
    """'float16' or 'bfloat16': which bit-pattern table decodes the histogram."""
    if isinstance(maps, torch.Tensor) and maps.dtype == torch.bfloat16:
        return "bfloat16"
    return "float16"


def _dtype_name(maps: Array) -> str:
    return str(maps.dtype).replace("torch.", "")
