"""Inference with a trained run: frozen guides in, maps and image scores out.

No training and no orchestration here, so atoms/, predict and the dashboard import
it without the pipeline. Data flow: tokens `[B, N, D]` (+ CLS `[B, D]`) -> patch
probabilities `[B, N]` -> maps `[B, S, S]` -> image scores `[B]`.

Image scores (ScoreConfig.image_score): "map" pools the raw map (studio), "smoothed_map"
pools the map after the run's Gaussian (official: max of the sigma-4 map), "cls" is the
official global guides' softmax on the CLS token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbones import load_backbone
from .backbones.base import Backbone
from .config import RunConfig, ScoreConfig
from .consistency import require_consistent
from .context import ContextScorer, context_scorer, resolve_context
from .devices import resolve_device
from .errors import SPGError
from .guides import GuideSet
from .images import image_to_tensor
from .metrics import smooth_maps
from .runs import GUIDES_FILE, SAE_FILE, RunDir
from .sae import TopKSAE
from .scoring import anomaly_maps, cls_scores, image_scores, upsample
from .store import TokenStore


def map_image_scores(maps: torch.Tensor, score: ScoreConfig) -> torch.Tensor:
    """`[B, S, S]` raw maps -> `[B]` image scores by the run's rule (the maps' own pooling,
    after the run's smoothing when `image_score` is "smoothed_map")."""
    if score.image_score == "smoothed_map" and score.smoothing_sigma > 0:
        maps = smooth_maps(maps.float(), score.smoothing_sigma)
    return image_scores(maps, score.aggregation, score.lse_temperature)


@dataclass
class Scorer:
    """Frozen guides ready to score tokens: local guide vectors `[2, D]`, the token grid and image
    side S, the run's scoring settings, and the global guide vectors `[2, D]` of official guides
    (None for a guide pair)."""

    guides: torch.Tensor
    tau: float
    grid: tuple[int, int]
    image_size: int
    score: ScoreConfig = field(default_factory=ScoreConfig)
    global_guides: torch.Tensor | None = None
    context: ContextScorer | None = None  # the atom-space context fused in (context.py); None: plain SPG

    @torch.no_grad()
    def __call__(
        self, tokens: torch.Tensor, cls: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[B, N, D]` (+ CLS `[B, D]`) -> (patch probabilities `[B, N]`, raw maps `[B, S, S]`, scores `[B]`)."""
        g = self.guides.to(tokens.device)
        probs, maps = anomaly_maps(tokens, g[0], g[1], tau=self.tau, grid=self.grid, size=self.image_size)
        if self.context is not None:
            probs = self.context(tokens, g, self.tau, self.grid)
            maps = upsample(probs, self.grid, self.image_size)
        if self.score.image_score == "cls":
            if self.global_guides is None or cls is None:
                raise SPGError(
                    "--image-score cls needs official (four-guide) guides and a backbone with a CLS token",
                    fix="use --image-score map, or a run made with --protocol official",
                )
            return probs, maps, cls_scores(cls.to(tokens.device), self.global_guides.to(tokens.device), self.tau)
        return probs, maps, map_image_scores(maps, self.score)


def score_store(
    store: TokenStore, scorer: Scorer, device: torch.device, batch_images: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch probabilities `[K, N]` and image scores `[K]` for every image of a store."""
    probs, scores = [], []
    for start in range(0, store.num_images, batch_images):
        idx = list(range(start, min(start + batch_images, store.num_images)))
        cls = store.cls(idx)
        p, _, s = scorer(store.tokens(idx).to(device), None if cls is None else cls.to(device))
        probs.append(p.cpu())
        scores.append(s.cpu())
    return torch.cat(probs), torch.cat(scores)


def target_maps(probs: torch.Tensor, grid: tuple[int, int], size: int, batch: int = 64) -> torch.Tensor:
    """Patch probabilities `[K, N]` -> full maps `[K, S, S]` float32 (upsampled in batches).

    Not fp16: confident guides put probabilities around 1e-6, where fp16 turns distinct
    values into ties and silently lowers pixel AUROC."""
    return torch.cat([upsample(probs[i : i + batch], grid, size).float() for i in range(0, probs.shape[0], batch)])


def dictionary_of(sae: TopKSAE | None, dim: int) -> torch.Tensor:
    """The guide dictionary `[D, M]`: the SAE's atoms, or the identity for free guides."""
    return sae.atoms().detach() if sae is not None else torch.eye(dim)


def load_run_sae(run: RunDir, cfg: RunConfig, dim: int | None) -> TopKSAE | None:
    """The run's SAE (checked against the token dimension), or None for free guides."""
    if cfg.method == "free_guides":
        return None
    sae, _ = TopKSAE.load(str(run.file(SAE_FILE)), expect_dim=dim)
    return sae


def load_run_backbone(
    cfg: RunConfig, device: torch.device, identity: dict[str, Any] | None = None, *, compile: bool = False
) -> Backbone:
    """The run's backbone with its protocol's tokens (and, for a stored run, its recorded image size
    and layer); `compile`: torch.compile it (ExtractConfig.compile). The one loader of a run's backbone."""
    identity = identity or {}
    backbone = load_backbone(
        cfg.backbone,
        cfg.weights,
        device=device,
        protocol=cfg.protocol,
        image_size=identity.get("image_size") or cfg.image_size,
        layer=identity.get("layer"),
    )
    if compile:
        backbone.enable_compile()
    return backbone


class Predictor:
    """A trained run ready to score new images or stored tokens (CLI `predict`, dashboard).

    `cfg` is the run's RunConfig; `config_json` is its config.json as stored, with what the
    pipeline recorded beside the options (store paths, `backbone_identity`)."""

    def __init__(
        self,
        run_dir: str | Path,
        device: str | torch.device = "auto",
        compile_backbone: bool = False,
        backbone: Backbone | None = None,
        score: ScoreConfig | None = None,
    ):
        self.run = RunDir(run_dir)
        self.config_json = self.run.read_config()
        require_consistent(self.run, ("sae", "guides"))  # maps from a mixed run would look right and be wrong
        self.cfg = RunConfig.from_dict(self.config_json)
        if score is not None:
            self.cfg.score = score
        self.cfg.score = resolve_context(self.cfg.score, self.cfg.protocol)
        self.device = resolve_device(device)
        self._backbone: Backbone | None = backbone
        self._compile = compile_backbone
        identity = self.config_json.get("backbone_identity", {})
        dim = int(identity.get("dim", 0)) or None
        self.sae = load_run_sae(self.run, self.cfg, dim)
        width = self.sae.width if self.sae is not None else dim
        self.guides, _ = GuideSet.load(str(self.run.file(GUIDES_FILE)), expect_width=width)
        self.dictionary = dictionary_of(self.sae, dim or 0)
        grid = tuple(identity.get("grid", (0, 0)))
        global_guides = self.guides.global_vectors(self.dictionary)
        self.scorer = Scorer(
            self.guides.guide_vectors(self.dictionary).detach(),
            self.cfg.guides.tau,
            grid,
            int(identity.get("image_size", 0)),
            self.cfg.score,
            None if global_guides is None else global_guides.detach(),
            context_scorer(self.cfg.score, self.sae),
        )

    @property
    def backbone(self) -> Backbone:
        """Loaded on first use: scoring stored tokens needs no backbone."""
        if self._backbone is None:
            identity = self.config_json.get("backbone_identity", {})
            self._backbone = load_run_backbone(self.cfg, self.device, identity, compile=self._compile)
            if self._backbone.dim != self.dictionary.shape[0]:
                raise SPGError(
                    f"backbone {self.cfg.backbone} gives {self._backbone.dim}-dim tokens but this run's "
                    f"dictionary is {self.dictionary.shape[0]}-dim",
                    path=str(self.run.path),
                    fix="use the backbone the run was trained with",
                )
        return self._backbone

    @torch.no_grad()
    def predict_images(self, images: list) -> dict[str, torch.Tensor]:
        """PIL images -> tokens `[B, N, D]`, probs `[B, N]`, maps `[B, S, S]` (smoothed as the run's
        metrics smooth them), scores `[B]`."""
        bb = self.backbone
        batch = torch.stack([image_to_tensor(im, bb.image_size, bb.pixels) for im in images]).to(self.device)
        tokens, cls = bb.extract_with_cls(batch)
        probs, maps, scores = self.scorer(tokens, cls)
        if self.cfg.score.smoothing_sigma > 0:
            maps = smooth_maps(maps.float(), self.cfg.score.smoothing_sigma)
        return {"tokens": tokens.cpu(), "probs": probs.cpu(), "maps": maps.cpu(), "scores": scores.cpu()}
