"""Methods side by side on one token store: SPG, SPG + context (context.py) and self-nn (baselines.py).

One trained run gives all three: the context only changes scoring, and self-nn needs no training.
SPG's logits and the context terms are computed once per store; each method is then a patch score
`[K, N]` put through the same maps, image-score rule and metrics (`evaluate_patches`), so their
figures differ only by the patch score. Used by `spg select` (the context's weight on held-out
auxiliary images), benchmarks/context_bench.py and the dashboard's Methods page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .baselines import self_nn_scores
from .config import ScoreConfig
from .context import batch_context, fuse
from .errors import SPGError
from .inference import Predictor, map_image_scores, target_maps
from .metrics import evaluate
from .sae import TopKSAE
from .scoring import cosine_logits, upsample
from .store import TokenStore

METHODS = ("SPG", "SPG + context", "self-nn")
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")


@torch.no_grad()
def logits_and_context(
    store: Any, sae: TopKSAE, guides: torch.Tensor, tau: float, indices: list[int] | None = None, batch: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """SPG anomaly logits `[K, N]` ((cos_a - cos_n) / tau, local guides `[2, D]`) and context terms
    `[K, N]` of a store's images (all, or `indices`)."""
    idx = list(range(store.num_images)) if indices is None else list(indices)
    logits, context = [], []
    g = guides.float().cpu()
    for i in range(0, len(idx), batch):
        tokens = store.tokens(idx[i : i + batch]).float()
        cos = cosine_logits(tokens, g)
        logits.append((cos[..., 1] - cos[..., 0]) / tau)
        context.append(batch_context(sae, tokens, store.grid).cpu())
    return torch.cat(logits), torch.cat(context)


def self_nn_patches(store: Any, indices: list[int] | None = None, batch: int = 16) -> torch.Tensor:
    """self-nn patch scores `[K, N]` of a store's images (all, or `indices`)."""
    idx = list(range(store.num_images)) if indices is None else list(indices)
    return torch.cat([self_nn_scores(store.tokens(idx[i : i + batch]), store.grid) for i in range(0, len(idx), batch)])


def method_patches(
    logits: torch.Tensor, context: torch.Tensor, form: str, weight: float, self_nn: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """{method: patch scores `[K, N]`}: SPG's probabilities, SPG + context fused, and self-nn if given."""
    out = {"SPG": torch.sigmoid(logits), "SPG + context": fuse(logits, context, form, weight)}
    if self_nn is not None:
        out["self-nn"] = self_nn
    return out


def evaluate_patches(
    patches: torch.Tensor, store: Any, score: ScoreConfig, progress: bool = False, **options: Any
) -> dict[str, Any]:
    """Metrics (`metrics.evaluate`) of patch scores `[K, N]` on a store: maps by bilinear upsampling,
    image scores by the run's rule (`score`), pixel metrics after the run's smoothing."""
    maps = target_maps(patches, store.grid, store.image_size)
    scores = map_image_scores(maps, score)
    masks = store.masks(range(store.num_images)).to(torch.uint8)
    return evaluate(
        scores.numpy(),
        store.labels(),
        maps.numpy(),
        masks.numpy(),
        [r["category"] for r in store.images],
        progress=progress,
        **{"smoothing_sigma": score.smoothing_sigma, **options},
    )


def run_parts(run_dir: str | Path, score: ScoreConfig | None = None) -> tuple[Predictor, Any]:
    """A run's Predictor (context setting resolved; `score` overrides the run's) and its target store."""
    predictor = Predictor(run_dir, device="cpu", score=score)
    if predictor.sae is None:
        raise SPGError("this run has no SAE: the context term needs atom codes", path=str(run_dir))
    store_path = predictor.config_json.get("target_store")
    if not store_path:
        raise SPGError("this run has no target store yet", path=str(run_dir), fix="run `spg eval --run RUN` first")
    return predictor, TokenStore(store_path)


def compare_methods(
    run_dir: str | Path, form: str, weight: float, progress: bool = False, **options: Any
) -> dict[str, dict[str, Any]]:
    """{method: metrics} of SPG, SPG + context (`form`, `weight`) and self-nn on a run's target store,
    with the run's own image-score rule and smoothing. Writes nothing."""
    predictor, store = run_parts(run_dir)
    score = predictor.cfg.score
    logits, context = logits_and_context(store, predictor.sae, predictor.scorer.guides, predictor.scorer.tau)
    patches = method_patches(logits, context, form, weight, self_nn_patches(store))
    return {name: evaluate_patches(p, store, score, progress, **options) for name, p in patches.items()}


def image_method_maps(
    predictor: Predictor, store: Any, index: int, form: str, weight: float
) -> dict[str, torch.Tensor]:
    """{method: map `[S, S]`} of one target image: SPG, SPG + context and self-nn (unsmoothed)."""
    logits, context = logits_and_context(store, predictor.sae, predictor.scorer.guides, predictor.scorer.tau, [index])
    patches = method_patches(logits, context, form, weight, self_nn_patches(store, [index]))
    return {name: upsample(p, store.grid, store.image_size)[0] for name, p in patches.items()}
