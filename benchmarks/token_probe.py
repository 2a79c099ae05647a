"""How far can ANY direction in a backbone's token space go? A linear probe beside the guides.

SPG's guides score a patch by cosine similarity to two directions in token space,
so a logistic regression on unit-normalised tokens, fitted to the auxiliary set's
patch labels, is (roughly) the best they could do for segmentation with that
backbone. It is no ceiling for image AUROC: its fit never looks at the max over a
good image, and a guide run can beat it there (builtin-v5 and v6, both directions). This prints the
probe on the unseen target categories, next to what a run reached, to say whether
the tokens or the guides/dictionary hold a result back.

    python benchmarks/token_probe.py                          # builtin, both synthetic directions
    python benchmarks/token_probe.py --backbone dinov2-large-tiny --aux synthetic-a --target synthetic-b

Prints per-category and mean image AUROC (max of the map) and pixel AUROC.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from spg_core.backbones import load_backbone
from spg_core.config import ExtractConfig
from spg_core.inference import target_maps
from spg_core.pipeline import extract


def patch_labels(masks: torch.Tensor, grid: tuple[int, int], covered: float = 0.3) -> np.ndarray:
    """`[K, S, S]` masks -> `[K, N]` bool: the patch is at least `covered` defect."""
    pooled = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0]
    return (pooled.flatten(1) >= covered).numpy()


def unit(tokens: torch.Tensor) -> np.ndarray:
    return F.normalize(tokens.float(), dim=-1).numpy()


def probe(aux: str, target: str, backbone_name: str, device: str) -> dict[str, tuple[float, float]]:
    """Fit on `aux` patches, score `target`; returns {category: (image AUROC, pixel AUROC)}."""
    bb = load_backbone(backbone_name, device=device)
    a, t = extract(aux, bb, ExtractConfig(quiet=True)), extract(target, bb, ExtractConfig(quiet=True))
    xa = unit(a.tokens(range(a.num_images)))
    ya = patch_labels(a.masks(range(a.num_images)), a.grid)
    clf = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced")
    clf.fit(xa.reshape(-1, xa.shape[-1]), ya.ravel())
    xt = unit(t.tokens(range(t.num_images)))
    logits = torch.from_numpy(clf.decision_function(xt.reshape(-1, xt.shape[-1])).reshape(len(xt), -1)).float()
    maps = target_maps(torch.sigmoid(logits), t.grid, t.image_size).float().numpy()
    masks = t.masks(range(t.num_images)).numpy()
    labels = t.labels()
    cats = np.array([r["category"] for r in t.images])
    out = {}
    for c in sorted(set(cats)):
        i = cats == c
        out[c] = (
            roc_auc_score(labels[i], maps[i].reshape(i.sum(), -1).max(1)),
            roc_auc_score(masks[i].ravel() > 0, maps[i].ravel()),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="builtin")
    ap.add_argument("--aux")
    ap.add_argument("--target")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    pairs = [(args.aux, args.target)] if args.aux else [("synthetic-a", "synthetic-b"), ("synthetic-b", "synthetic-a")]
    for aux, target in pairs:
        start = time.time()
        res = probe(aux, target, args.backbone, args.device)
        mean = np.mean(list(res.values()), axis=0)
        cells = "  ".join(f"{c} {a:.3f}/{p:.3f}" for c, (a, p) in res.items())
        print(
            f"{args.backbone}  {aux} -> {target}  linear-probe image/pixel AUROC: {cells}  "
            f"| mean {mean[0]:.3f}/{mean[1]:.3f}  ({time.time() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
