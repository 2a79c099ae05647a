"""Evaluation metrics: image AUROC / AP, pixel AUROC and AUPRO, fast and exact.

Definitions (SPG_METHOD.md, "Evaluation")
-----------------------------------------
* image AUROC / AP: identical to sklearn's ``roc_auc_score`` /
  ``average_precision_score`` (ties handled the same way).
* pixel AUROC: ROC over every pixel of the set, exact with ties (the
  trapezoid over all distinct thresholds, as sklearn does).
* AUPRO, ``variant="mvtec"`` (default, exact): the MVTec AD definition. For
  every distinct map value t: FPR(t) = fraction of normal pixels (mask 0, over
  all images) with map >= t; PRO(t) = mean over all ground-truth connected
  components of the fraction of the component's pixels with map >= t.
  Components use 8-connectivity (a 3x3 structuring element, as the MVTec
  reference code) and never cross images. The curve starts at (0, 0), ends at
  (1, 1), is integrated with the trapezoid rule up to FPR = ``max_fpr``
  (interpolated exactly there) and divided by ``max_fpr``.
* AUPRO, ``variant="anomalyclip"``: AnomalyCLIP's ``cal_pro_score``: 200
  thresholds ``np.arange(min, max, (max - min) / 200)`` over the set's map
  values, a pixel is positive when map > threshold, points with
  FPR < ``max_fpr`` are kept, their FPR is min-max rescaled to [0, 1] and the
  trapezoid area is taken. AnomalyCLIP also smooths its maps with a Gaussian
  of sigma 4 first; smoothing is a separate option here, so to reproduce their
  numbers pass ``smoothing_sigma=4`` to :func:`evaluate` (or call
  :func:`smooth_maps` yourself). The 8-connectivity matches skimage's default
  ``measure.label`` that they use.

How it is fast (and exact)
--------------------------
Every pixel metric is a function of one small *summary* of the set:

* the CDF of the normal pixels' values (how many are < v and <= v), and
* for each distinct value u taken by anomalous pixels: how many anomalous
  pixels take it and the sum of ``1 / |component|`` over them.

The PRO weight is what removes the per-component work: PRO(t) is
``sum over anomalous pixels p with map >= t of 1 / (C * |component(p)|)``, so
one weighted histogram replaces one curve per component. From the summary,
AUROC is the Mann-Whitney statistic with half-counted ties (== sklearn's
trapezoid) and the exact PRO curve has two vertices per distinct anomalous
value (the FPR only moves horizontally between them).

The summary is built in one streaming pass over image chunks, never holding
a float64 copy of the maps:

* 16-bit maps (float16, bfloat16) take the *histogram path*: a 65536-bin
  ``bincount`` of the raw bit patterns, ordered afterwards by the value each
  pattern encodes. Exact, O(pixels), a few ns per pixel on one CPU core,
  and ~10 MB of extra memory whatever the set size.
* other maps (float32, float64, integers) take the *sort path*: normal pixels'
  values are copied once (same dtype, one buffer) and sorted in place in as
  many parts as there are CPU cores; the CDF sums ``searchsorted`` over parts.
  Anomalous pixels (a few percent) are sorted with their weights. Exact for
  the dtype given; nothing is quantised. Costs O(n log n) and one copy of
  the normal pixels in the maps' dtype: store maps as float16 when you can.

On CUDA (``device="cuda"``, the default when available) the same passes run
with torch: ``torch.bincount`` for the histogram path, ``torch.sort`` /
``torch.searchsorted`` for the sort path. Connected components are always
labelled on CPU with ``scipy.ndimage.label``, once per image, on the bounding
box of its anomalous pixels. The curve arithmetic (small arrays) is float64
numpy on every device.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Union

import numpy as np
import torch
from scipy import ndimage

from .errors import SPGError

Array = Union[np.ndarray, torch.Tensor]

CONNECTIVITY = 8
"""Ground-truth components are 8-connected (3x3 structuring element), as in the
MVTec AD reference evaluation and skimage's default used by AnomalyCLIP."""

ANOMALYCLIP_STEPS = 200
AUPRO_VARIANTS = ("mvtec", "anomalyclip")
METRIC_KEYS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")

_STRUCTURE_2D = np.ones((3, 3), dtype=bool)      # 8-connectivity

_N_CODES = 1 << 16                 # 16-bit maps: one bin per bit pattern
_CPU_CHUNK_PIXELS = 1 << 23        # ~8 M pixels per chunk: bounded temporaries
_CUDA_CHUNK_PIXELS = 1 << 26
_PARALLEL_SORT_MIN = 1 << 22       # below this a single sort beats thread start-up


# --------------------------------------------------------------------------
# input conversion and validation
# --------------------------------------------------------------------------

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
        raise SPGError(f"{name} could not be read as an array ({exc})",
                       fix=f"pass {name} as a numpy array or torch tensor") from exc


def _scores_1d(scores: Array | Sequence[float], name: str = "scores") -> np.ndarray:
    """Validate image scores: 1-D, real, finite -> float64 [N]."""
    s = _to_numpy(scores, name)
    if s.ndim != 1:
        raise SPGError(f"{name} must be 1-D [N], got shape {tuple(s.shape)}",
                       fix=f"flatten {name} to one score per image")
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == bool) or np.iscomplexobj(s):
        raise SPGError(f"{name} must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise SPGError(f"{name} contains NaN or inf ({int((~np.isfinite(s)).sum())} values)",
                       fix="check the model output; replace non-finite scores before evaluating")
    return s


def _labels_1d(labels: Array | Sequence[int], n: int, name: str = "labels") -> np.ndarray:
    """Validate binary image labels -> bool [N]."""
    y = _to_numpy(labels, name)
    if y.shape != (n,):
        raise SPGError(f"{name} has shape {tuple(y.shape)} but the scores have shape ({n},)",
                       fix="pass one label per image score")
    if y.dtype != bool:
        if not np.isin(y, (0, 1)).all():
            bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
            raise SPGError(f"{name} must be 0 (normal) or 1 (anomalous), found {bad.tolist()}",
                           fix=f"binarise {name}, e.g. labels > 0")
        y = y.astype(bool)
    return y


def _check_pixel_inputs(maps: Array, masks: Array) -> tuple[int, int, int]:
    """Validate maps [K, H, W] (real) and masks of the same shape; return (K, H, W)."""
    for name, a in (("maps", maps), ("masks", masks)):
        if not isinstance(a, (np.ndarray, torch.Tensor)):
            raise SPGError(f"{name} must be a numpy array or torch tensor, got {type(a).__name__}",
                           fix=f"stack {name} into one array of shape [K, H, W]")
    if maps.ndim != 3:
        raise SPGError(f"maps must have shape [K, H, W], got {tuple(maps.shape)}",
                       fix="add a leading axis for a single map (maps[None]) or squeeze channel axes")
    if tuple(masks.shape) != tuple(maps.shape):
        raise SPGError(f"masks shape {tuple(masks.shape)} does not match maps shape "
                       f"{tuple(maps.shape)}",
                       fix="resize maps or masks to the same [K, H, W] (eval_resolution) first")
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


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SPGError(f"device {str(device)!r} requested but CUDA is not available",
                       fix="pass device='cpu' (or None to pick automatically)")
    if dev.type not in ("cpu", "cuda"):
        raise SPGError(f"device {str(device)!r} is not supported", fix="use 'cpu' or 'cuda'")
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


# --------------------------------------------------------------------------
# image-level metrics
# --------------------------------------------------------------------------

def _tie_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct score (ascending): (normal count, anomalous count), int64 [V] each."""
    _, inverse = np.unique(scores, return_inverse=True)
    pos = np.bincount(inverse[labels], minlength=inverse.max() + 1)
    allc = np.bincount(inverse, minlength=inverse.max() + 1)
    return allc - pos, pos


def _mann_whitney_auroc(pos: np.ndarray, neg_lt: np.ndarray, neg_le: np.ndarray,
                        n_pos: int, n_neg: int) -> float:
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
    s = _scores_1d(scores)
    y = _labels_1d(labels, s.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        warnings.warn(f"image AUROC is undefined with only one class "
                      f"({n_pos} anomalous, {n_neg} normal images); returning NaN", stacklevel=2)
        return math.nan
    neg, pos = _tie_counts(s, y)
    neg_lt = np.cumsum(neg) - neg
    return _mann_whitney_auroc(pos, neg_lt, neg_lt + neg, n_pos, n_neg)


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
    s = _scores_1d(scores)
    y = _labels_1d(labels, s.size)
    n_pos = int(y.sum())
    if n_pos == 0:
        warnings.warn("image AP is undefined without anomalous images; returning NaN",
                      stacklevel=2)
        return math.nan
    neg, pos = _tie_counts(s, y)
    tps = np.cumsum(pos[::-1]).astype(np.float64)
    fps = np.cumsum(neg[::-1]).astype(np.float64)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


# --------------------------------------------------------------------------
# the pixel summary
# --------------------------------------------------------------------------

class _HistCDF:
    """CDF of normal pixels from a histogram over distinct values."""

    def __init__(self, values: np.ndarray, counts: np.ndarray):
        keep = counts > 0
        self.values = values[keep]                                       # float64 [V] ascending
        self.cum = np.concatenate(([0], np.cumsum(counts[keep])))       # int64 [V + 1]

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
    """

    n_neg: int
    n_pos: int
    n_components: int
    neg_cdf: _HistCDF | _SortedCDF
    pos_values: np.ndarray
    pos_counts: np.ndarray
    pos_weights: np.ndarray
    vmin: float
    vmax: float
    path: str


def _mask_chunk(masks: Array, idx: np.ndarray) -> np.ndarray:
    """masks[idx] -> CPU bool [k, H, W]; non-binary masks are an error."""
    m = _to_numpy(_take(masks, idx), "masks")
    if m.dtype == bool:
        return m
    binary = (m == 0) | (m == 1)
    if not binary.all():
        bad = np.unique(m[~binary])[:5]
        raise SPGError(f"masks must be 0 (normal) or 1 (anomalous), found values {bad.tolist()}",
                       fix="binarise the masks first, e.g. masks > 0.5")
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
    for a, b in zip(bounds[:-1], bounds[1:]):
        r, c = row[a:b], col[a:b]
        r0, c0 = r.min(), c.min()
        crop = mask[image[a], r0:r.max() + 1, c0:c.max() + 1]
        labels, n = ndimage.label(crop, structure=_STRUCTURE_2D)
        lab = labels[r - r0, c - c0]
        sizes = np.bincount(lab, minlength=n + 1)
        sizes[0] = 1                                   # background: never indexed
        weight[a:b] = 1.0 / sizes[lab]
        n_total += n
    return pos_idx, weight, n_total


def _take(a: Array, idx: np.ndarray) -> Array:
    """a[idx] along axis 0: a view for a contiguous run, a copy of the chunk otherwise."""
    if idx.size and int(idx[-1]) - int(idx[0]) + 1 == idx.size and np.all(np.diff(idx) == 1):
        return a[int(idx[0]): int(idx[-1]) + 1]
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


def _map_chunk(maps: Array, idx: np.ndarray, device: torch.device,
               cast: np.dtype | None = None) -> Array:
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
    with np.errstate(invalid="ignore"):          # signalling-NaN patterns
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
        self.all_t = (torch.zeros(_N_CODES, dtype=torch.int64, device=device)
                      if device.type == "cuda" else None)           # stays on the GPU
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
                self.all += np.bincount(codes[start:start + per_image], minlength=_N_CODES)
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
            raise SPGError(f"maps contain {n_nan} NaN values",
                           fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating")
        n_vals = values.size

        def merged(h: np.ndarray) -> np.ndarray:          # per code -> per distinct value
            return np.bincount(group, weights=h[order], minlength=n_vals)

        all_v = np.rint(merged(self.all)).astype(np.int64)   # counts < 2^53: exact in float64
        pos_v = np.rint(merged(self.pos)).astype(np.int64)
        pro_v = merged(self.pro)
        neg_v = all_v - pos_v
        present = np.flatnonzero(all_v)
        has_pos = pos_v > 0
        return PixelSummary(
            n_neg=int(neg_v.sum()), n_pos=int(pos_v.sum()), n_components=self.n_components,
            neg_cdf=_HistCDF(values, neg_v),
            pos_values=values[has_pos], pos_counts=pos_v[has_pos], pos_weights=pro_v[has_pos],
            vmin=float(values[present[0]]), vmax=float(values[present[-1]]),
            path=f"histogram:{self.kind}",
        )


def _n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


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

    def add(self, chunk: Array, mask: np.ndarray, pos_idx: np.ndarray, weight: np.ndarray,
            n_components: int) -> None:
        flat = chunk.reshape(-1)
        n_neg = flat.shape[0] - pos_idx.size
        dest = self.buf[self.fill:self.fill + n_neg]
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
                dest[at:at + values.size] = values
                at += values.size
            self.pos_vals.append(flat[pos_idx])
        self.fill += n_neg
        self.pos_w.append(weight)
        self.n_components += n_components

    def _sorted_parts(self) -> list[Array]:
        data = self.buf[:self.fill]
        if isinstance(data, torch.Tensor):
            return [torch.sort(data).values] if self.fill else []
        # Parallel in-place sorts of contiguous parts (numpy releases the GIL).
        n = _n_workers() if self.fill >= _PARALLEL_SORT_MIN else 1
        bounds = np.linspace(0, self.fill, n + 1).astype(np.int64)
        parts = [data[bounds[i]:bounds[i + 1]] for i in range(n) if bounds[i + 1] > bounds[i]]
        if len(parts) > 1:
            with ThreadPoolExecutor(len(parts)) as pool:
                list(pool.map(np.ndarray.sort, parts))
        elif parts:
            parts[0].sort()
        return parts

    def finish(self, dtype_name: str) -> PixelSummary:
        parts = self._sorted_parts()
        # NaN sorts last in numpy and torch: checking each part's end is enough.
        if any(bool(np.isnan(float(p[-1]))) for p in parts):
            raise SPGError("maps contain NaN values",
                           fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating")
        pos = np.concatenate(self.pos_vals) if self.pos_vals else np.zeros(0)
        w = np.concatenate(self.pos_w) if self.pos_w else np.zeros(0)
        if pos.size and np.isnan(pos.astype(np.float64)).any():
            raise SPGError("maps contain NaN values",
                           fix="check the model output; replace NaNs (e.g. np.nan_to_num) before evaluating")
        order = np.argsort(pos, kind="stable")
        pos_sorted = pos[order].astype(np.float64)
        values, counts, weights = _run_lengths(pos_sorted, w[order])
        extremes = [float(p[0]) for p in parts] + [float(p[-1]) for p in parts]
        if pos_sorted.size:
            extremes += [float(pos_sorted[0]), float(pos_sorted[-1])]
        return PixelSummary(
            n_neg=self.fill, n_pos=int(pos.size), n_components=self.n_components,
            neg_cdf=_SortedCDF(parts), pos_values=values, pos_counts=counts, pos_weights=weights,
            vmin=min(extremes), vmax=max(extremes), path=f"sort:{dtype_name}",
        )


def _run_lengths(sorted_vals: np.ndarray, weights: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal neighbours of a sorted array: (distinct values, counts, weight sums)."""
    if sorted_vals.size == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0)
    # compare neighbours (not diff: inf - inf is NaN); -0.0 == 0.0 as in sklearn
    starts = np.flatnonzero(np.concatenate(([True], sorted_vals[1:] != sorted_vals[:-1])))
    counts = np.diff(np.append(starts, sorted_vals.size))
    return sorted_vals[starts], counts.astype(np.int64), np.add.reduceat(weights, starts)


def summarise_pixels(maps: Array, masks: Array, *, index: np.ndarray | None = None,
                     smoothing_sigma: float = 0.0, device: str | torch.device | None = None,
                     progress: Any = None) -> PixelSummary:
    """One streaming pass over ``maps[index]`` / ``masks[index]`` -> :class:`PixelSummary`.

    Args:
        maps: [K, H, W] real maps (numpy or torch, any device).
        masks: [K, H, W] 0/1 ground truth.
        index: int [k] images to use (default all), e.g. one category's.
        smoothing_sigma: Gaussian smoothing applied per chunk (0 = off).
        device: "cpu", "cuda" or None (CUDA when available).
        progress: optional tqdm-like object; ``update(n_images)`` is called.
    """
    k, h, w = _check_pixel_inputs(maps, masks)
    dev = _resolve_device(device)
    idx = np.arange(k) if index is None else np.asarray(index, dtype=np.int64)
    if idx.size == 0:
        raise SPGError("no images selected for pixel metrics", fix="pass a non-empty index")
    budget = _CUDA_CHUNK_PIXELS if dev.type == "cuda" else _CPU_CHUNK_PIXELS
    per_chunk = max(1, budget // (h * w))

    cast: np.dtype | None = None
    if _is_16bit_float(maps):
        acc: _HistogramAccumulator | _SortAccumulator = _HistogramAccumulator(_code_kind(maps), dev)
    else:
        cast = _sort_dtype(maps)
        acc = _SortAccumulator(idx.size * h * w, _torch_dtype(cast) if dev.type == "cuda" else cast, dev)

    for start in range(0, idx.size, per_chunk):
        sel = idx[start:start + per_chunk]
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


# --------------------------------------------------------------------------
# pixel metrics from the summary
# --------------------------------------------------------------------------

def _pixel_auroc_from(s: PixelSummary) -> float:
    """Exact pixel AUROC (NaN when a class is missing)."""
    if s.n_pos == 0 or s.n_neg == 0:
        return math.nan
    lt = s.neg_cdf.count_lt(s.pos_values)
    le = s.neg_cdf.count_le(s.pos_values)
    return _mann_whitney_auroc(s.pos_counts, lt, le, s.n_pos, s.n_neg)


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * np.diff(x)))


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area of the polyline (x nondecreasing) from x[0] to ``x_max``,
    interpolating y linearly at exactly x_max (as the MVTec reference does)."""
    k = int(np.searchsorted(x, x_max, side="right"))       # points with x <= x_max
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


def _aupro_mvtec_from(s: PixelSummary, max_fpr: float) -> float:
    if s.n_components == 0 or s.n_neg == 0:
        return math.nan
    x, y = pro_curve(s)
    return _area_up_to(x, y, max_fpr) / max_fpr


def _anomalyclip_thresholds(vmin: float, vmax: float, steps: int = ANOMALYCLIP_STEPS) -> np.ndarray:
    """``np.arange(min, max, (max - min) / steps)`` as in AnomalyCLIP (float64 here;
    like there, rounding can give ``steps + 1`` thresholds)."""
    if not vmax > vmin or not math.isfinite(vmax - vmin):
        return np.zeros(0)
    return np.arange(vmin, vmax, (vmax - vmin) / steps)


def _aupro_anomalyclip_from(s: PixelSummary, max_fpr: float,
                            steps: int = ANOMALYCLIP_STEPS) -> tuple[float, str | None]:
    """AnomalyCLIP's AUPRO; returns (value, reason it is NaN or None)."""
    if s.n_components == 0 or s.n_neg == 0:
        return math.nan, "no anomalous pixel" if s.n_components == 0 else "no normal pixel"
    th = _anomalyclip_thresholds(s.vmin, s.vmax, steps)
    if th.size == 0:
        return math.nan, "constant map: AnomalyCLIP's threshold grid is empty"
    fpr = (s.n_neg - s.neg_cdf.count_le(th)) / float(s.n_neg)          # map > th
    cum_w = np.concatenate(([0.0], np.cumsum(s.pos_weights)))
    above = cum_w[-1] - cum_w[np.searchsorted(s.pos_values, th, side="right")]
    pro = above / s.n_components
    keep = fpr < max_fpr
    f, p = fpr[keep][::-1], pro[keep][::-1]                             # FPR ascending
    if f.size < 2 or f[-1] == f[0]:
        return math.nan, (f"fewer than two distinct FPR values below {max_fpr} on "
                          f"AnomalyCLIP's {steps}-step grid")
    f = (f - f[0]) / (f[-1] - f[0])
    return _trapezoid(f, p), None


def _check_aupro_args(max_fpr: float, variant: str) -> None:
    if variant not in AUPRO_VARIANTS:
        raise SPGError(f"unknown AUPRO variant {variant!r}",
                       fix=f"use one of {', '.join(map(repr, AUPRO_VARIANTS))}")
    if not (isinstance(max_fpr, (int, float)) and 0.0 < max_fpr <= 1.0):
        raise SPGError(f"max_fpr must be in (0, 1], got {max_fpr!r}", fix="the usual value is 0.3")


def pixel_auroc(maps: Array, masks: Array, *, device: str | torch.device | None = None) -> float:
    """Exact pixel-level AUROC over all pixels of the set.

    Args:
        maps: [K, H, W] anomaly maps (float16 / bfloat16: histogram path;
            other dtypes: sort path; both exact).
        masks: [K, H, W] 0/1 ground truth.
        device: "cpu", "cuda" or None (CUDA when available).
    Returns:
        AUROC in [0, 1]; NaN (with a warning) when a class is missing.
    """
    s = summarise_pixels(maps, masks, device=device)
    value = _pixel_auroc_from(s)
    if math.isnan(value):
        warnings.warn(f"pixel AUROC is undefined ({s.n_pos} anomalous, {s.n_neg} normal pixels); "
                      "returning NaN", stacklevel=2)
    return value


def aupro(maps: Array, masks: Array, max_fpr: float = 0.3, variant: str = "mvtec", *,
          device: str | torch.device | None = None) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    Args:
        maps: [K, H, W] anomaly maps.
        masks: [K, H, W] 0/1 ground truth; components are 8-connected.
        max_fpr: integration limit (0.3 in the literature).
        variant: "mvtec" (exact, every distinct threshold) or "anomalyclip"
            (200-step grid, FPR rescaled; see the module docstring; AnomalyCLIP
            smooths maps with sigma 4 first, use :func:`smooth_maps`).
        device: "cpu", "cuda" or None (CUDA when available).
    Returns:
        AUPRO in [0, 1]; NaN (with a warning) when undefined.
    """
    _check_aupro_args(max_fpr, variant)
    s = summarise_pixels(maps, masks, device=device)
    value, reason = _aupro_from(s, max_fpr, variant)
    if reason:
        warnings.warn(f"AUPRO is undefined ({reason}); returning NaN", stacklevel=2)
    return value


def _aupro_from(s: PixelSummary, max_fpr: float, variant: str) -> tuple[float, str | None]:
    if variant == "anomalyclip":
        return _aupro_anomalyclip_from(s, max_fpr)
    if s.n_components == 0:
        return math.nan, "no anomalous pixel"
    if s.n_neg == 0:
        return math.nan, "no normal pixel"
    return _aupro_mvtec_from(s, max_fpr), None


# --------------------------------------------------------------------------
# smoothing
# --------------------------------------------------------------------------

def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), normalised."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy's 'reflect' padding (d c b a | a b c d | d c b a), any radius."""
    i = np.arange(-radius, n + radius) % (2 * n)
    i = np.where(i >= n, 2 * n - 1 - i, i)
    return torch.from_numpy(i).to(device)


def _gaussian_torch(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian over the last two axes of [..., H, W], in float32,
    matching ``scipy.ndimage.gaussian_filter(mode='reflect', truncate=4)``."""
    kernel = torch.as_tensor(_gaussian_kernel(sigma), dtype=torch.float32, device=maps.device)
    radius = (kernel.numel() - 1) // 2
    shape = maps.shape
    y = maps.reshape(-1, shape[-2], shape[-1]).float()
    for axis in (2, 1):                       # W then H
        n = y.shape[axis]
        padded = y.index_select(axis, _reflect_index(n, radius, y.device))
        moved = padded.movedim(axis, -1)
        rows = moved.reshape(-1, 1, moved.shape[-1])
        out = torch.nn.functional.conv1d(rows, kernel.view(1, 1, -1))
        y = out.reshape(*moved.shape[:-1], n).movedim(-1, axis)
    return y.reshape(shape).to(maps.dtype)


def _gaussian_numpy(maps: np.ndarray, sigma: float) -> np.ndarray:
    """scipy Gaussian per map over the last two axes; computed in float32 (or
    float64 for float64 input), returned in the input dtype."""
    work = np.float64 if maps.dtype == np.float64 else np.float32
    out = np.empty_like(maps)
    flat_in = maps.reshape(-1, *maps.shape[-2:])
    flat_out = out.reshape(-1, *maps.shape[-2:])
    for i in range(flat_in.shape[0]):        # one map at a time: bounded temporaries
        flat_out[i] = ndimage.gaussian_filter(flat_in[i].astype(work), sigma, mode="reflect")
    return out


def _smooth_chunk(chunk: Array, sigma: float, code_kind: str) -> Array:
    """Smooth a chunk as produced by :func:`_map_chunk` (uint16 = raw 16-bit codes)."""
    if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint16 and code_kind == "bfloat16":
        t = torch.from_numpy(chunk.view(np.int16)).view(torch.bfloat16)
        return _map_chunk(smooth_maps(t, sigma), np.arange(t.shape[0]), torch.device("cpu"))
    if isinstance(chunk, np.ndarray) and chunk.dtype == np.uint16:
        return smooth_maps(chunk.view(np.float16), sigma).view(np.uint16)
    return smooth_maps(chunk, sigma)


def smooth_maps(maps: Array, sigma: float) -> Array:
    """Gaussian smoothing of each map over its last two axes.

    Same as ``scipy.ndimage.gaussian_filter(map, sigma)`` per map (mode
    'reflect', truncate 4). Computed in float32 and returned in the input's
    type, dtype and device (so float16 maps stay float16 and keep the exact
    histogram path). CUDA tensors are smoothed on the GPU.

    Args:
        maps: [..., H, W] numpy array or torch tensor.
        sigma: standard deviation in pixels; 0 returns ``maps`` unchanged.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma >= 0):
        raise SPGError(f"smoothing sigma must be a finite number >= 0, got {sigma!r}",
                       fix="use 0 (off) or e.g. 4 as in AnomalyCLIP")
    if sigma == 0:
        return maps
    if maps.ndim < 2:
        raise SPGError(f"maps must have at least 2 axes [..., H, W], got shape {tuple(maps.shape)}")
    if isinstance(maps, torch.Tensor):
        if maps.device.type == "cuda":
            return _gaussian_torch(maps, sigma)
        if maps.dtype == torch.bfloat16:
            return _gaussian_torch(maps, sigma)
        return torch.from_numpy(_gaussian_numpy(maps.detach().numpy(), sigma))
    return _gaussian_numpy(np.asarray(maps), sigma)


# --------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------

def _nan_metrics() -> dict[str, float]:
    return {key: math.nan for key in METRIC_KEYS}


def _category_metrics(scores: np.ndarray, labels: np.ndarray, s: PixelSummary,
                      variant: str, max_fpr: float) -> tuple[dict[str, float], list[str]]:
    """All four metrics of one category and the reasons for any NaN."""
    out = _nan_metrics()
    reasons: list[str] = []
    n_anom = int(labels.sum())
    n_norm = labels.size - n_anom
    if n_anom and n_norm:
        neg, pos = _tie_counts(scores, labels)
        neg_lt = np.cumsum(neg) - neg
        out["image_auroc"] = _mann_whitney_auroc(pos, neg_lt, neg_lt + neg, n_anom, n_norm)
    else:
        reasons.append(f"image_auroc undefined ({n_anom} anomalous, {n_norm} normal images)")
    if n_anom:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["image_ap"] = image_ap(scores, labels)
    else:
        reasons.append("image_ap undefined (no anomalous image)")
    out["pixel_auroc"] = _pixel_auroc_from(s)
    if math.isnan(out["pixel_auroc"]):
        reasons.append(f"pixel_auroc undefined ({s.n_pos} anomalous, {s.n_neg} normal pixels)")
    out["aupro"], why = _aupro_from(s, max_fpr, variant)
    if why:
        reasons.append(f"aupro undefined ({why})")
    return out, reasons


def evaluate(image_scores: Array | Sequence[float], image_labels: Array | Sequence[int],
             maps: Array, masks: Array, categories: Sequence[str] | np.ndarray, *,
             aupro_variant: str = "mvtec", max_fpr: float = 0.3, smoothing_sigma: float = 0.0,
             eval_resolution: Any = "input", device: str | torch.device | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Per-category and mean metrics, as the paper's tables report them.

    Args:
        image_scores: [N] image anomaly scores.
        image_labels: [N] 0 normal / 1 anomalous.
        maps: [N, H, W] anomaly maps (keep them float16 for the fastest exact path).
        masks: [N, H, W] 0/1 ground truth at the same resolution.
        categories: [N] category name of each image.
        aupro_variant: "mvtec" (exact) or "anomalyclip" (their 200-step grid;
            pass smoothing_sigma=4 as well to reproduce their numbers).
        max_fpr: AUPRO integration limit.
        smoothing_sigma: Gaussian smoothing of maps before the pixel metrics (0 = off).
        eval_resolution: recorded only; the caller resizes maps and masks.
        device: "cpu", "cuda" or None (CUDA when available).
        progress: show a progress bar.
    Returns:
        {"mean": {metric: float}, "per_category": {cat: {metric: float}},
         "settings": {...}, "warnings": [str]} with metrics as fractions in [0, 1].
        Undefined metrics are NaN (and warned about); means skip them and the
        skipped categories are listed in "warnings".
    """
    _check_aupro_args(max_fpr, aupro_variant)
    scores = _scores_1d(image_scores, "image_scores")
    n = scores.size
    labels = _labels_1d(image_labels, n, "image_labels")
    cats = np.asarray([str(c) for c in categories])
    if cats.shape != (n,):
        raise SPGError(f"categories has {cats.size} entries but there are {n} image scores",
                       fix="pass one category name per image")
    k, _, _ = _check_pixel_inputs(maps, masks)
    if k != n:
        raise SPGError(f"maps hold {k} images but there are {n} image scores",
                       fix="pass one map (and mask) per image, in the same order")
    dev = _resolve_device(device)
    if not (isinstance(smoothing_sigma, (int, float)) and smoothing_sigma >= 0):
        raise SPGError(f"smoothing_sigma must be >= 0, got {smoothing_sigma!r}")

    names = list(dict.fromkeys(cats.tolist()))            # first-appearance order
    bar = _progress_bar(n, progress)
    per_category: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    paths: set[str] = set()
    try:
        for name in names:
            idx = np.flatnonzero(cats == name)
            summary = summarise_pixels(maps, masks, index=idx, smoothing_sigma=smoothing_sigma,
                                       device=dev, progress=bar)
            paths.add(summary.path)
            per_category[name], reasons = _category_metrics(
                scores[idx], labels[idx], summary, aupro_variant, max_fpr)
            if reasons:
                msg = f"category {name!r}: " + "; ".join(reasons) + " -> NaN"
                warnings.warn(msg, stacklevel=2)
                notes.append(msg)
    finally:
        if bar is not None:
            bar.close()

    mean: dict[str, float] = {}
    for key in METRIC_KEYS:
        vals = {c: m[key] for c, m in per_category.items()}
        finite = [v for v in vals.values() if not math.isnan(v)]
        mean[key] = float(np.mean(finite)) if finite else math.nan
        skipped = [c for c, v in vals.items() if math.isnan(v)]
        if skipped:
            notes.append(f"mean {key} skips {len(skipped)} categor"
                         f"{'y' if len(skipped) == 1 else 'ies'} with NaN: {', '.join(skipped)}")

    settings = {
        "aupro_variant": aupro_variant,
        "max_fpr": float(max_fpr),
        "smoothing_sigma": float(smoothing_sigma),
        "eval_resolution": eval_resolution,
        "aupro_thresholds": ("all distinct map values (exact)" if aupro_variant == "mvtec"
                             else f"{ANOMALYCLIP_STEPS} evenly spaced (AnomalyCLIP)"),
        "connectivity": CONNECTIVITY,
        "map_dtype": _dtype_name(maps),
        "exact_path": sorted(paths),
        "device": str(dev),
        "n_images": n,
        "n_categories": len(names),
    }
    return {"mean": mean, "per_category": per_category, "settings": settings, "warnings": notes}


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a bar is never worth a crash
        return None
    return tqdm(total=total, desc="metrics", unit="img")
