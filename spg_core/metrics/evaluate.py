"""`evaluate`: per-category and mean metrics as the paper's tables report them.

One rule for undefined metrics everywhere (``spg run``, ``spg eval``, ``spg sweep``,
the atom ablation): a metric a category cannot define (one class only, no anomalous
pixel, no threshold of the official grid below the FPR limit) is NaN for that category,
with a warning naming the category and why; the mean over categories skips NaNs and
says which categories it skipped; a mean with nothing to average is NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import SPGError
from ._inputs import Array, _check_pixel_inputs, _dtype_name, _labels_1d, _scores_1d, metrics_device
from .aupro import aupro_from, aupro_official_from, check_max_fpr
from .chunks import CONNECTIVITY
from .image import image_ap_checked, image_auroc_checked
from .official_grid import OFFICIAL_STEPS
from .pixel_auroc import pixel_auroc_from
from .pixels import summarise_pixels

IMAGE_KEYS = ("image_auroc", "image_ap")
PIXEL_KEYS = ("pixel_auroc", "aupro", "aupro_official")
METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS
"""The keys of metrics.json's ``mean`` and ``per_category`` entries, in table order."""

AUPRO_VARIANTS = ("mvtec", "official")
"""Which AUPRO a run names as its headline (``--aupro``); both are always reported.
"anomalyclip" is accepted as the official one's earlier name."""
_VARIANT_ALIASES = {"anomalyclip": "official"}


def aupro_variant_name(variant: str) -> str:
    """Validate an ``--aupro`` choice -> "mvtec" or "official"."""
    name = _VARIANT_ALIASES.get(variant, variant)
    if name not in AUPRO_VARIANTS:
        raise SPGError(f"unknown AUPRO variant {variant!r}", fix=f"use one of {', '.join(map(repr, AUPRO_VARIANTS))}")
    return name


def _categories(categories: Sequence[str] | np.ndarray, n: int) -> np.ndarray:
    cats = np.asarray([str(c) for c in categories])
    if cats.shape != (n,):
        raise SPGError(
            f"categories has {cats.size} entries but there are {n} images", fix="pass one category name per image"
        )
    return cats


def _names(cats: np.ndarray) -> list[str]:
    return list(dict.fromkeys(cats.tolist()))  # first-appearance order


def image_metrics_by_category(
    image_scores: Array | Sequence[float], image_labels: Array | Sequence[int], categories: Sequence[str] | np.ndarray
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Image AUROC and AP of each category: ({cat: {key: value}}, notes on NaNs).

    Args:
        image_scores: [N] image anomaly scores.
        image_labels: [N] 0 normal / 1 anomalous.
        categories: [N] category name of each image.
    """
    scores = _scores_1d(image_scores, "image_scores")
    labels = _labels_1d(image_labels, scores.size, "image_labels")
    cats = _categories(categories, scores.size)
    out: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for name in _names(cats):
        idx = np.flatnonzero(cats == name)
        row: dict[str, float] = {}
        for key, fn in (("image_auroc", image_auroc_checked), ("image_ap", image_ap_checked)):
            row[key], why = fn(scores[idx], labels[idx])
            if why:
                notes.append(f"category {name!r}: {key} undefined ({why}) -> NaN")
        out[name] = row
    return out, notes


def pixel_metrics_by_category(
    maps: Array,
    masks: Array,
    categories: Sequence[str] | np.ndarray,
    *,
    max_fpr: float = 0.3,
    smoothing_sigma: float = 0.0,
    device: str | torch.device | None = None,
    progress: Any = None,
) -> tuple[dict[str, dict[str, float]], list[str], set[str]]:
    """Pixel AUROC, exact AUPRO and official AUPRO of each category, from one summary each.

    Args:
        maps: [N, H, W] anomaly maps. masks: [N, H, W] 0/1 ground truth.
        categories: [N] category name of each map.
    Returns:
        ({cat: {key: value}}, notes on NaNs, the exact paths used).
    """
    k, _, _ = _check_pixel_inputs(maps, masks)
    cats = _categories(categories, k)
    out: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    paths: set[str] = set()
    for name in _names(cats):
        summary = summarise_pixels(
            maps,
            masks,
            index=np.flatnonzero(cats == name),
            smoothing_sigma=smoothing_sigma,
            device=device,
            progress=progress,
        )
        paths.add(summary.path)
        row: dict[str, float] = {}
        for key, value_and_why in (
            ("pixel_auroc", pixel_auroc_from(summary)),
            ("aupro", aupro_from(summary, max_fpr)),
            ("aupro_official", aupro_official_from(summary, max_fpr)),
        ):
            row[key], why = value_and_why
            if why:
                notes.append(f"category {name!r}: {key} undefined ({why}) -> NaN")
        out[name] = row
    return out, notes, paths


def mean_over_categories(
    per_category: dict[str, dict[str, float]], keys: Sequence[str] = METRIC_KEYS
) -> tuple[dict[str, float], list[str]]:
    """Mean of each metric over the categories that define it: ({key: mean}, notes on skips)."""
    mean: dict[str, float] = {}
    notes: list[str] = []
    for key in keys:
        vals = {c: m.get(key, math.nan) for c, m in per_category.items()}
        finite = [v for v in vals.values() if not math.isnan(v)]
        mean[key] = float(np.mean(finite)) if finite else math.nan
        skipped = [c for c, v in vals.items() if math.isnan(v)]
        if skipped:
            notes.append(
                f"mean {key} skips {len(skipped)} categor"
                f"{'y' if len(skipped) == 1 else 'ies'} with NaN: {', '.join(skipped)}"
            )
    return mean, notes


def evaluate(
    image_scores: Array | Sequence[float],
    image_labels: Array | Sequence[int],
    maps: Array,
    masks: Array,
    categories: Sequence[str] | np.ndarray,
    *,
    aupro_variant: str = "mvtec",
    max_fpr: float = 0.3,
    smoothing_sigma: float = 0.0,
    eval_resolution: Any = "input",
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Per-category and mean metrics, as the paper's tables report them.

    Args:
        image_scores: [N] image anomaly scores.
        image_labels: [N] 0 normal / 1 anomalous.
        maps: [N, H, W] anomaly maps (float16 is the fastest exact path).
        masks: [N, H, W] 0/1 ground truth at the same resolution.
        categories: [N] category name of each image.
        aupro_variant: the headline AUPRO, "mvtec" (exact) or "official"; recorded in
            the settings only, since ``aupro`` (exact) and ``aupro_official`` are both
            always computed.
        max_fpr: AUPRO FPR limit.
        smoothing_sigma: Gaussian smoothing of maps before the pixel metrics (0 = off;
            the official code smooths with 4).
        eval_resolution: recorded only; the caller resizes maps and masks.
        device: "cpu", "cuda" or None (CUDA when available).
        progress: show a progress bar.
    Returns:
        {"mean": {metric: float}, "per_category": {cat: {metric: float}},
         "settings": {...}, "warnings": [str]} with the metrics of :data:`METRIC_KEYS`
        as fractions in [0, 1]. Undefined metrics are NaN (and warned about); means
        skip them and the skipped categories are listed in "warnings".
    """
    variant = aupro_variant_name(aupro_variant)
    check_max_fpr(max_fpr)
    scores = _scores_1d(image_scores, "image_scores")
    n = scores.size
    labels = _labels_1d(image_labels, n, "image_labels")
    cats = _categories(categories, n)
    k, _, _ = _check_pixel_inputs(maps, masks)
    if k != n:
        raise SPGError(
            f"maps hold {k} images but there are {n} image scores",
            fix="pass one map (and mask) per image, in the same order",
        )
    dev = metrics_device(device)
    if not (isinstance(smoothing_sigma, (int, float)) and smoothing_sigma >= 0):
        raise SPGError(f"smoothing_sigma must be >= 0, got {smoothing_sigma!r}")

    image_rows, notes = image_metrics_by_category(scores, labels, cats)
    bar = _progress_bar(n, progress)
    try:
        pixel_rows, pixel_notes, paths = pixel_metrics_by_category(
            maps, masks, cats, max_fpr=max_fpr, smoothing_sigma=smoothing_sigma, device=dev, progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
    notes += pixel_notes
    for note in notes:
        warnings.warn(note, stacklevel=2)
    per_category = {c: {**image_rows[c], **pixel_rows[c]} for c in image_rows}
    mean, mean_notes = mean_over_categories(per_category)

    settings = {
        "aupro_variant": variant,
        "max_fpr": float(max_fpr),
        "smoothing_sigma": float(smoothing_sigma),
        "eval_resolution": eval_resolution,
        "aupro_thresholds": {
            "aupro": "all distinct map values (exact, MVTec AD)",
            "aupro_official": f"{OFFICIAL_STEPS} evenly spaced from min to max (official SPG), FPR rescaled",
        },
        "connectivity": CONNECTIVITY,
        "map_dtype": _dtype_name(maps),
        "exact_path": sorted(paths),
        "device": str(dev),
        "n_images": n,
        "n_categories": len(per_category),
    }
    return {"mean": mean, "per_category": per_category, "settings": settings, "warnings": notes + mean_notes}


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    return tqdm(total=total, desc="metrics", unit="img")
