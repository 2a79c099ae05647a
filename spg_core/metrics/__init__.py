"""Evaluation metrics: image AUROC / AP, pixel AUROC and two AUPROs, fast and exact.

One module per idea, one public entry per metric:

=====================  ==================================================================
``image``              :func:`image_auroc`, :func:`image_ap` (equal to sklearn's, ties included)
``summary``            :class:`PixelSummary`: the few arrays every pixel metric is a function of
``pixels``             :func:`summarise_pixels`: one streaming pass over maps and masks
``accumulators``       how a pass summarises each map dtype (16-bit histogram, or sort)
``two_pass``           32/64-bit maps on CPU, unsmoothed: exact in two passes, no copy of the maps
``official_grid``      the official AUPRO's 200-threshold grid (:func:`official_thresholds`)
``chunks``             reading chunks of maps and masks, labelling 8-connected components
``pixel_auroc``        :func:`pixel_auroc` (exact, over every pixel)
``aupro``              :func:`aupro` (exact MVTec AD) and :func:`aupro_official` (official SPG)
``smoothing``          :func:`smooth_maps` (scipy's Gaussian, on CPU or GPU)
``evaluate``           :func:`evaluate`: per-category and mean metrics, one NaN rule
=====================  ==================================================================

Definitions are in each module's docstring (SPG_METHOD.md, "Evaluation").
"""

from .aupro import aupro, aupro_official, pro_curve
from .chunks import CONNECTIVITY
from .evaluate import (
    AUPRO_VARIANTS,
    IMAGE_KEYS,
    METRIC_KEYS,
    PIXEL_KEYS,
    evaluate,
    image_metrics_by_category,
    mean_over_categories,
    pixel_metrics_by_category,
)
from .image import image_ap, image_auroc
from .official_grid import OFFICIAL_STEPS, official_thresholds
from .pixel_auroc import pixel_auroc
from .pixels import summarise_pixels
from .smoothing import smooth_maps
from .summary import PixelSummary

__all__ = [
    "AUPRO_VARIANTS",
    "CONNECTIVITY",
    "IMAGE_KEYS",
    "METRIC_KEYS",
    "OFFICIAL_STEPS",
    "PIXEL_KEYS",
    "PixelSummary",
    "aupro",
    "aupro_official",
    "evaluate",
    "image_ap",
    "image_auroc",
    "image_metrics_by_category",
    "mean_over_categories",
    "official_thresholds",
    "pixel_auroc",
    "pixel_metrics_by_category",
    "pro_curve",
    "smooth_maps",
    "summarise_pixels",
]
