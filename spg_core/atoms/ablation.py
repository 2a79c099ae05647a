"""What-if: remove or rescale atoms of a guide, and recompute the target maps and metrics.

Only the coefficients of the active atoms change, so everything that depends on
the target tokens is computed once: each normalised target token projected on
the union U of both guides' active atoms,

    Q = (f / |f|)^T D_U            [K * N, U]   (cached, on the device)
    l = Q c'_U / |D_U c'_U|         one small matmul per guide

and an ablation costs one `[K N, U] x [U, 2]` product, the upsampling and the
metrics. The cache takes K * N * U * 4 bytes in float32 (pass dtype=float16 to
halve it for large target sets; logits then carry ~1e-3 relative error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SPGError
from ..inference import Predictor, map_image_scores
from ..metrics import evaluate
from ..render import logit
from ..scoring import atom_logit_weights, patch_probabilities, unit, upsample
from ..store import TokenStore
from .ranking import guide_row, require_atoms


@dataclass
class AblationResult:
    """scores `[K]`, patch probabilities `[K, N]`, metrics (evaluate()'s dict, or None when not asked),
    coefficients `[2, U]` used (rows normal, anomaly; columns `Ablator.atoms`). All on the CPU."""

    scores: torch.Tensor
    probs: torch.Tensor
    metrics: dict[str, Any] | None
    coefficients: torch.Tensor


def open_target_store(config: dict[str, Any], run_path: str | Path) -> TokenStore:
    """The run's target token store (written by `spg eval`), with a fix when it is gone."""
    path = config.get("target_store")
    if not path:
        raise SPGError(
            "this run has not been evaluated on a target set yet",
            path=str(run_path),
            fix="run `spg eval --run DIR` first",
        )
    if not (Path(path) / "manifest.json").is_file():
        raise SPGError(
            "the run's target token store is missing (cache deleted or moved)",
            path=str(path),
            fix="re-run `spg eval --run DIR` to re-extract it",
        )
    return TokenStore(path)


class Ablator:
    """Interactive ablations on a run's cached target tokens.

    `ablate(remove=[j, ...], scale={j: factor}, guide="anomaly")` zeroes or rescales coefficients
    of active atoms of one guide and returns the target's scores, patch maps and metrics;
    `drop(atoms)` removes atoms from both guides at once (e.g. every flagged atom).
    """

    def __init__(
        self,
        run: str | Path | Predictor,
        *,
        store: TokenStore | None = None,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        batch_images: int = 64,
    ):
        self.predictor = run if isinstance(run, Predictor) else Predictor(run, device=device)
        require_atoms(self.predictor.guides)
        self.device = self.predictor.device
        self.store = store or open_target_store(self.predictor.config_json, self.predictor.run.path)
        self.batch_images = batch_images
        coef = self.predictor.guides.coefficients().detach().float()
        self.atoms = (coef > 0).any(dim=0).nonzero().flatten()  # [U]
        self.base = coef[:, self.atoms].to(self.device)  # [2, U]
        self.dict_u = self.predictor.dictionary[:, self.atoms].float().to(self.device)  # [D, U]
        self.proj = self._project(dtype)  # [K * N, U]
        self.grid, self.size = self.store.grid, self.store.image_size
        self.labels = self.store.labels()
        self.categories = [r["category"] for r in self.store.images]
        self.metric_options = self._metric_options()
        self._masks: np.ndarray | None = None
        self._baseline: AblationResult | None = None

    @torch.no_grad()
    def _project(self, dtype: torch.dtype) -> torch.Tensor:
        """Normalised target tokens times the active atoms, shard by shard: `[K * N, U]`."""
        if self.store.dim != self.dict_u.shape[0]:
            raise SPGError(
                "target tokens and the run's dictionary differ in dimension",
                path=str(self.store.root),
                fix="re-run `spg eval --run DIR` with the run's backbone",
            )
        parts = []
        for _, shard in self.store.iter_shards():
            for lo in range(0, shard.shape[0], self.batch_images):
                x = torch.from_numpy(np.array(shard[lo : lo + self.batch_images])).to(self.device).float()
                parts.append((unit(x.reshape(-1, x.shape[-1])) @ self.dict_u).to(dtype))
        return torch.cat(parts)

    def _metric_options(self) -> dict[str, Any]:
        """The run's own evaluation settings, so an empty ablation reproduces metrics.json."""
        settings: dict[str, Any] = {}
        if self.predictor.run.exists("metrics.json"):
            settings = self.predictor.run.read_metrics().get("settings", {})
        return {
            "aupro_variant": settings.get("aupro_variant", "mvtec"),
            "max_fpr": settings.get("max_fpr", 0.3),
            "smoothing_sigma": settings.get("smoothing_sigma", self.predictor.cfg.score.smoothing_sigma),
        }

    @property
    def masks(self) -> np.ndarray:
        """Target masks `[K, S, S]` uint8, read on first use (only metrics need them)."""
        if self._masks is None:
            self._masks = self.store.masks(range(self.store.num_images)).to(torch.uint8).numpy()
        return self._masks

    def coefficients(
        self, remove: list[int] | tuple[int, ...] = (), scale: dict[int, float] | None = None, guide: str = "anomaly"
    ) -> torch.Tensor:
        """The run's coefficients over `atoms` `[2, U]` with `guide`'s atoms removed (x0) or rescaled."""
        row = guide_row(guide)
        changes = {**{int(j): float(s) for j, s in (scale or {}).items()}, **{int(j): 0.0 for j in remove}}
        c = self.base.clone()
        active = set(self.atoms[self.base[row].cpu() > 0].tolist())
        for atom, factor in changes.items():
            if atom not in active:
                raise SPGError(
                    f"atom {atom} is not active in the {guide} guide, so it cannot be removed or rescaled",
                    fix=f"choose among the {len(active)} active atoms (see rank_atoms)",
                )
            if not (math.isfinite(factor) and factor >= 0):
                raise SPGError(
                    f"scale factor for atom {atom} must be finite and >= 0, got {factor}",
                    fix="coefficients are non-negative: use 0 to remove an atom",
                )
            pos = int(torch.searchsorted(self.atoms, torch.tensor(atom)))
            c[row, pos] *= factor
        return c

    @torch.no_grad()
    def patch_probs(self, coefficients: torch.Tensor, rows: int = 1 << 18) -> torch.Tensor:
        """Patch anomaly probabilities `[K, N]` for coefficients `[2, U]` (computed in row blocks)."""
        c = coefficients.to(self.device).float()
        w = atom_logit_weights(self.dict_u, c)  # c / |g|: scoring's cosine
        logits = torch.cat([self.proj[i : i + rows].float() @ w.t() for i in range(0, self.proj.shape[0], rows)])
        probs = patch_probabilities(logits[:, 0], logits[:, 1], self.predictor.cfg.guides.tau)
        return probs.reshape(self.store.num_images, -1)

    @torch.no_grad()
    def ablate(
        self,
        remove: list[int] | tuple[int, ...] = (),
        scale: dict[int, float] | None = None,
        guide: str = "anomaly",
        *,
        metrics: bool = True,
    ) -> AblationResult:
        """Scores, maps and (with `metrics`) evaluate()'s metrics with the edited coefficients."""
        return self.with_coefficients(self.coefficients(remove, scale, guide), metrics=metrics)

    def drop(self, atoms: list[int] | tuple[int, ...], *, metrics: bool = True) -> AblationResult:
        """`atoms` removed from every guide that weights them; atoms active in neither are skipped."""
        wanted = {int(a) for a in atoms}
        c = self.base.clone()
        c[:, [i for i, a in enumerate(self.atoms.tolist()) if a in wanted]] = 0.0
        return self.with_coefficients(c, metrics=metrics)

    @torch.no_grad()
    def with_coefficients(self, c: torch.Tensor, *, metrics: bool = True) -> AblationResult:
        """Scores, maps and (with `metrics`) metrics for coefficients `c` `[2, U]` over `atoms`."""
        probs = self.patch_probs(c)
        agg = self.predictor.cfg.score
        scores, maps = [], []
        for i in range(0, probs.shape[0], self.batch_images):
            full = upsample(probs[i : i + self.batch_images], self.grid, self.size)
            scores.append(map_image_scores(full, agg).cpu())  # the run's own image-score rule
            if metrics:
                maps.append(full.float().cpu())
        scores_t = torch.cat(scores)
        result = None
        if metrics:
            result = evaluate(
                scores_t.numpy(),
                self.labels,
                torch.cat(maps).numpy(),
                self.masks,
                self.categories,
                device=self.device,
                **self.metric_options,
            )
        return AblationResult(scores_t, probs.cpu(), result, c.cpu())

    def baseline(self) -> AblationResult:
        """The unedited run (computed once): compare ablations against it."""
        if self._baseline is None:
            self._baseline = self.ablate()
        return self._baseline


def logit_difference(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """after - before in log-odds (the space of the run's fitted colour scale), same shape as the inputs:
    near-0 and near-1 probabilities that look equal on a 0-1 scale still differ here."""
    return torch.from_numpy(logit(after.double().numpy()) - logit(before.double().numpy()))
