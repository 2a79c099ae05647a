"""`spg eval --save-maps DIR`: the final map of every target image, one `.npz` each.

Like the official evaluator's `save_maps` (riips/SPG `src/runners/evaluator.py`): the map
the metrics see (patch probabilities upsampled bilinearly to S x S, then the Gaussian of
the evaluation's sigma), with the image's path, label and image score, so methods can be
compared map by map. File `NNNNNN.npz` = the image's index in the target store; keys:

    anomaly_map  float32 [S, S]   image_path  str   label  int (1 = anomalous)
    image_score  float            category    str   defect str
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .metrics import smooth_maps


def save_maps(
    out: str | Path,
    maps: torch.Tensor,
    scores: torch.Tensor,
    images: list[dict[str, Any]],
    sigma: float,
    batch: int = 64,
) -> int:
    """Write `maps` `[K, S, S]` (upsampled, not yet smoothed) smoothed by `sigma`, with `scores` `[K]`
    and the store's image records, as `out/NNNNNN.npz`; each file atomically. Returns K."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for start in range(0, maps.shape[0], batch):
        final = smooth_maps(maps[start : start + batch].float(), sigma).numpy()
        for j, m in enumerate(final):
            i = start + j
            record = images[i]
            with atomic_path(out / f"{i:06d}.npz") as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(
                    fh,
                    anomaly_map=m.astype(np.float32),
                    image_path=record["image_path"],
                    label=int(record["label"]),
                    image_score=float(scores[i]),
                    category=record["category"],
                    defect=record["defect"],
                )
    return maps.shape[0]
