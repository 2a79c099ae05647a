"""Decision thresholds and the map colour scale, chosen on the auxiliary set only.

A run's target labels must not pick its own threshold (that would flatter every
error count shown at it), so the default comes from the auxiliary images the
guides were fitted on, scored with the run's own Scorer:

- `image_threshold`: the image-score cut-off that lets a chosen share (5%) of the auxiliary
  good images through as false positives (rule "aux_fpr", the default), beside the one that
  maximises F1 of the image decisions on the auxiliary images (rule "aux_max_f1"). The FPR rule
  is the default because F1 depends on the auxiliary set's share of anomalous images, which says
  nothing about a production line's: on the small test run (96 anomalous, 40 good auxiliary
  images) the max-F1 cut-off flags 90% of the auxiliary good images.
- `pixel_scale`: quantiles of the auxiliary good images' smoothed pixel maps, in logit
  space (patch probabilities span orders of magnitude), which the dashboard's colour
  scale runs between: blue at the median normal pixel, red at the 99.9th percentile.

Both are recorded in RUN/threshold.json (`write_run_threshold`, atomic); runs that
lack it get it computed on first use (`ensure_run_threshold`). The target's own best-F1
threshold (`best_f1_threshold` on target labels) is an oracle, labelled so wherever shown.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import read_json, write_json
from .errors import SPGError
from .inference import Predictor, score_store, target_maps
from .metrics import smooth_maps
from .render import logit
from .run_lock import command_line, run_lock
from .runs import THRESHOLD_FILE
from .store import TokenStore

VERSION = 2
DEFAULT_FPR = 0.05  # the alternative rule: 5% of auxiliary good images flagged
SCALE_QUANTILES = (0.5, 0.99, 0.999)  # of auxiliary good pixels: colour floor, -, colour ceiling
MAX_SCALE_IMAGES = 64  # good images sampled for the pixel quantiles (enough for 0.999)


def best_f1_threshold(scores: Iterable[float], labels: Iterable[int]) -> float:
    """The image-score threshold with the best F1 (ties: the lowest) over labelled scores."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=np.int64)
    if s.size == 0:
        return 0.5
    if y.sum() == 0 or y.sum() == y.size:
        return float(np.median(s))
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    f1 = 2 * tp / (tp + fp + y.sum())
    # Only cut where the score changes, so the threshold separates distinct values.
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    best = int(np.argmax(np.where(last_of_run, f1, -1)))
    return float(s_sorted[best])


def fpr_threshold(good_scores: Iterable[float], fpr: float = DEFAULT_FPR) -> float:
    """The lowest threshold that calls at most `fpr` of the good images anomalous (score >= t)."""
    s = np.sort(np.asarray(list(good_scores), dtype=np.float64))[::-1]
    if s.size == 0:
        raise SPGError("no good images to set a false-positive rate on", fix="use rule 'aux_max_f1'")
    if not 0.0 <= fpr < 1.0:
        raise SPGError(f"false-positive rate must lie in [0, 1), got {fpr}")
    allowed = int(math.floor(fpr * s.size))  # images at or above the cut-off
    # Just above the (allowed+1)-th largest score: that image and all below stay negative.
    return float(np.nextafter(s[allowed], np.inf))


def decision_counts(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """TP, FP, FN, TN, F1 and the false-positive rate of `score >= threshold` decisions."""
    pred = np.asarray(scores) >= threshold
    y = np.asarray(labels).astype(bool)
    tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
    fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "f1": f1, "fpr": fp / max(fp + tn, 1)}


def image_threshold(scores: np.ndarray, labels: np.ndarray, fpr: float = DEFAULT_FPR) -> dict[str, Any]:
    """Both auxiliary rules over auxiliary image scores `[K]` and labels `[K]`; "rule" names the default
    ("aux_fpr"; without good images "aux_max_f1", which then falls back to the median score)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    f1_cut = best_f1_threshold(scores, labels)
    out: dict[str, Any] = {
        "rule": "aux_max_f1",
        "threshold": f1_cut,
        "aux_max_f1": {"threshold": f1_cut, **decision_counts(scores, labels, f1_cut)},
    }
    if (labels == 0).any():
        cut = fpr_threshold(scores[labels == 0], fpr)
        out["aux_fpr"] = {"fpr_target": fpr, "threshold": cut, **decision_counts(scores, labels, cut)}
        out["rule"], out["threshold"] = "aux_fpr", cut
    return out


def pixel_scale(good_maps: torch.Tensor | np.ndarray, smoothing_sigma: float) -> dict[str, Any]:
    """Colour-scale anchors from auxiliary good images' full-size maps `[G, S, S]` (probabilities).

    The maps are smoothed as the run's protocol does (sigma in pixels) before the quantiles, so the
    scale fits what the pages draw. Returns {"space": "logit", "q50", "q99", "q999", "vmin", "vmax", ...}.
    """
    maps = smooth_maps(torch.as_tensor(good_maps).float(), float(smoothing_sigma))
    values = logit(torch.as_tensor(maps).reshape(-1).numpy())
    if values.size == 0:
        raise SPGError("no auxiliary good pixels to fit the colour scale on")
    q = np.quantile(values, SCALE_QUANTILES)
    vmin, vmax = float(q[0]), float(q[2])
    if vmax - vmin < 1e-6:  # a flat normal field: give the scale some width
        vmax = vmin + 1.0
    return {
        "space": "logit",
        "smoothing_sigma": float(smoothing_sigma),
        "images": len(maps),
        "q50": float(q[0]),
        "q99": float(q[1]),
        "q999": float(q[2]),
        "vmin": vmin,
        "vmax": vmax,
    }


def compute_run_threshold(
    run_dir: str | Path, *, fpr: float = DEFAULT_FPR, device: str = "cpu", predictor: Any | None = None
) -> dict[str, Any]:
    """Score the run's auxiliary token store with its Scorer and derive threshold and colour scale.

    Reads config.json's `aux_store`; the pixel scale uses up to MAX_SCALE_IMAGES good images
    (evenly spaced) so a large auxiliary set costs a bounded pass.
    """
    pred = predictor if predictor is not None else Predictor(run_dir, device=device)
    aux_path = pred.config_json.get("aux_store")
    if not aux_path or not Path(aux_path).is_dir():
        raise SPGError(
            "the run's auxiliary token store is not available",
            path=str(aux_path or run_dir),
            fix="re-run `spg run` (it records aux_store in config.json) or rebuild the store",
        )
    store = TokenStore(aux_path)
    probs, scores = score_store(store, pred.scorer, pred.device)
    labels = store.labels()
    good = np.flatnonzero(labels == 0)
    if good.size == 0:
        raise SPGError("the auxiliary set has no good images to fit the colour scale on", path=str(aux_path))
    picks = good[np.linspace(0, good.size - 1, num=min(good.size, MAX_SCALE_IMAGES)).round().astype(int)]
    good_maps = target_maps(probs[torch.as_tensor(np.unique(picks))], store.grid, store.image_size)
    sigma = float(pred.cfg.score.smoothing_sigma)
    return {
        "version": VERSION,
        "source": "auxiliary set",
        "aux": pred.cfg.aux,
        "aux_images": int(labels.size),
        "aux_good_images": int(good.size),
        "aggregation": pred.cfg.score.aggregation,
        "image": image_threshold(scores.numpy(), labels, fpr),
        "pixel_scale": pixel_scale(good_maps, sigma),
    }


def write_run_threshold(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`compute_run_threshold` written to RUN/threshold.json (temp file + rename), under the run's lock."""
    with run_lock(run_dir, command_line()):
        record = compute_run_threshold(run_dir, **kwargs)
        write_json(Path(run_dir) / THRESHOLD_FILE, record)
    return record


def read_run_threshold(run_dir: str | Path) -> dict[str, Any] | None:
    """RUN/threshold.json, or None when the run has none (or an older version)."""
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    record = read_json(path, what="run threshold")
    return record if record.get("version") == VERSION else None


def ensure_run_threshold(run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """The run's recorded threshold, computed and written first when it lacks one (older runs)."""
    return read_run_threshold(run_dir) or write_run_threshold(run_dir, **kwargs)
