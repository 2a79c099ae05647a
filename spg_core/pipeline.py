"""The SPG stages end to end: extract -> SAE -> guides -> target maps -> metrics.

Each stage is a function over stored artifacts, so the CLI can run them one by
one (`spg extract`, `spg train-sae`, `spg train-guides`, `spg eval`) or all at
once (`spg run`), and the dashboard can call the same code.
"""

from __future__ import annotations

import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, distributed
from .atomic import write_json
from .backbones import load_backbone
from .backbones.base import Backbone, resolve_device
from .config import GuideConfig, RunConfig, SAEConfig
from .data import open_dataset
from .errors import SPGError
from .guides import GuidePair, saturation_note, train_guides
from .metrics import image_auroc
from .runs import GUIDES, SAE, RunDir
from .sae import TopKSAE
from .sae_train import evaluate_sae, train_sae
from .scoring import anomaly_maps, cosine_logits, image_scores, patch_probabilities, upsample
from .store import TokenStore, build_store

METHODS = ("spg", "free_guides", "random_dict")


# -- stage 0: tokens ------------------------------------------------------------------------

def extract(spec: str, backbone: Backbone, *, cache_dir: str | Path | None = None, skip_bad: bool = False,
            batch_size: int | None = None, num_workers: int | None = None, progress: bool = True) -> TokenStore:
    """Open dataset `spec` (its test split) and return its (re-used, resumed or new) token store."""
    dataset = open_dataset(spec, split="test", cache_dir=str(cache_dir) if cache_dir else None)
    return build_store(dataset, backbone, cache_dir=cache_dir, skip_bad=skip_bad, batch_size=batch_size,
                       num_workers=num_workers, progress=progress)


# -- stage 1: dictionary --------------------------------------------------------------------

def fit_dictionary(store: TokenStore, cfg: SAEConfig, method: str, device: torch.device,
                   progress: bool = True) -> tuple[TopKSAE | None, dict[str, Any]]:
    """Train the SAE ('spg'), draw a random one ('random_dict'), or none ('free_guides')."""
    if method == "free_guides":
        return None, {"trained": False, "note": "free guides: no dictionary"}
    tokens = store.all_tokens(device="cpu", dtype=torch.float16)
    if method == "random_dict":
        sae = TopKSAE(store.dim, cfg.width, cfg.k, seed=cfg.seed).to(device)
        sae.init_bias(tokens[:: max(1, tokens.shape[0] // 65536)].to(device), cfg.init_bias)
        return sae, {"trained": False, "note": "random unit-norm dictionary", **evaluate_sae(sae, tokens)}
    t0 = time.perf_counter()
    sae, history = train_sae(tokens, cfg, tokens_per_image=store.num_patches, device=device, progress=progress)
    return sae, {"trained": True, "seconds": time.perf_counter() - t0, "history": history, **history[-1]}


def dictionary_of(sae: TopKSAE | None, dim: int) -> torch.Tensor:
    """The guide dictionary `[D, M]`: the SAE's atoms, or the identity for free guides."""
    return sae.W_dec.detach() if sae is not None else torch.eye(dim)


# -- stage 2: guides ------------------------------------------------------------------------

def fit_guides(store: TokenStore, dictionary: torch.Tensor, cfg: GuideConfig, device: torch.device,
               progress: bool = True) -> tuple[GuidePair, dict[str, Any]]:
    """Train the guide pair on the auxiliary store's tokens and masks."""
    resident = store.num_images * store.num_patches * store.dim * 4 < 2 * 1024 ** 3
    cache = store.tokens(range(store.num_images)).to(device) if resident else None

    def get_batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx.tolist()
        tokens = cache[idx] if cache is not None else store.tokens(idx)
        return tokens, store.masks(idx)

    t0 = time.perf_counter()
    pair, history = train_guides(dictionary, get_batch, store.num_images, store.grid, cfg,
                                 device=device, progress=progress)
    seconds = time.perf_counter() - t0
    a_n, a_a = pair.active_atoms()
    guides = pair.guide_vectors(dictionary.to(device)).detach()
    fit = auxiliary_fit(get_batch, store.num_images, store.grid, guides, cfg.tau, device)
    note = saturation_note(fit, asdict(cfg))
    if note:
        warnings.warn(note, stacklevel=2)
    return pair, {"seconds": seconds, "history": history,
                  "active_normal": len(a_n), "active_anomaly": len(a_a), "aux_fit": fit}


@torch.no_grad()
def auxiliary_fit(get_batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], num_images: int,
                  grid: tuple[int, int], guides: torch.Tensor, tau: float, device: torch.device,
                  covered: float = 0.5) -> dict[str, float]:
    """How the saved (EMA) guides `[2, D]` separate the auxiliary set they were trained on.

    `get_batch` is the training one (tokens `[B, N, D]`, masks `[B, S, S]`). A patch is a
    defect patch when its mask covers at least `covered` of it. Returns the patch AUROC
    (defect vs normal patches), the median p(anomaly) on each, the normal patches' 99th
    percentile and the fraction of each above 0.5. Training under focal loss keeps p low on
    rare positives, so calibration is judged by the medians, not by 0.5.
    """
    defect, normal = [], []
    for start in range(0, num_images, 64):
        tokens, masks = get_batch(torch.arange(start, min(start + 64, num_images)))
        tokens = tokens.to(device)
        probs = patch_probabilities(cosine_logits(tokens, guides[0]), cosine_logits(tokens, guides[1]), tau).cpu()
        labels = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0].flatten(1) >= covered
        defect.append(probs[labels])
        normal.append(probs[~labels])
    d, n = torch.cat(defect).double(), torch.cat(normal).double()

    def stat(x: torch.Tensor, fn) -> float:
        return float(fn(x)) if len(x) else float("nan")
    auroc = image_auroc(torch.cat([d, n]).numpy(), np.r_[np.ones(len(d)), np.zeros(len(n))]) \
        if len(d) and len(n) else float("nan")
    return {"patch_auroc": auroc, "p_defect_median": stat(d, torch.median), "p_normal_median": stat(n, torch.median),
            "p_normal_q99": stat(n, lambda x: x.kthvalue(max(1, int(0.99 * len(x)))).values),
            "defect_patches_flagged": stat(d, lambda x: (x > 0.5).double().mean()),
            "normal_patches_flagged": stat(n, lambda x: (x > 0.5).double().mean()),
            "defect_patches": len(d), "normal_patches": len(n)}


# -- inference ------------------------------------------------------------------------------

@dataclass
class Scorer:
    """Frozen guides ready to score tokens: guide vectors `[2, D]` and the scoring settings."""

    guides: torch.Tensor
    tau: float
    grid: tuple[int, int]
    image_size: int
    aggregation: str = "max"
    lse_temperature: float = 0.1

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[B, N, D]` -> (patch probabilities `[B, N]`, maps `[B, S, S]`, scores `[B]`)."""
        g = self.guides.to(tokens.device)
        probs, maps = anomaly_maps(tokens, g[0], g[1], tau=self.tau, grid=self.grid, size=self.image_size)
        return probs, maps, image_scores(maps, self.aggregation, self.lse_temperature)


def score_store(store: TokenStore, scorer: Scorer, device: torch.device,
                batch_images: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Patch probabilities `[K, N]` and image scores `[K]` for every image of a store."""
    probs, scores = [], []
    for start in range(0, store.num_images, batch_images):
        idx = list(range(start, min(start + batch_images, store.num_images)))
        p, _, s = scorer(store.tokens(idx).to(device))
        probs.append(p.cpu())
        scores.append(s.cpu())
    return torch.cat(probs), torch.cat(scores)


def target_maps(probs: torch.Tensor, grid: tuple[int, int], size: int, batch: int = 64) -> torch.Tensor:
    """Patch probabilities `[K, N]` -> full maps `[K, S, S]` float32 (upsampled in batches).

    Not fp16: confident guides put probabilities around 1e-6, where fp16 turns distinct
    values into ties and silently lowers pixel AUROC."""
    return torch.cat([upsample(probs[i:i + batch], grid, size).float()
                      for i in range(0, probs.shape[0], batch)])


# -- whole runs -----------------------------------------------------------------------------

def environment() -> dict[str, Any]:
    import transformers
    return {"spg_core": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def train_stages(cfg: RunConfig, out: str | Path, *, cache_dir: str | Path | None = None, skip_bad: bool = False,
                 batch_size: int | None = None, num_workers: int | None = None, progress: bool = True,
                 compile_backbone: bool = False, stages: Iterable[str] = ("sae", "guides"),
                 backbone: Backbone | None = None) -> RunDir:
    """Stages 1 and 2 on the auxiliary set, writing config, SAE and guides into `out`.

    `backbone`: an already loaded one (so `spg run` loads the model once for both sets)."""
    if cfg.method not in METHODS:
        raise SPGError(f"unknown method {cfg.method!r}", fix=f"use one of {', '.join(METHODS)}")
    run = RunDir(out)
    device = resolve_device(cfg.device)
    if backbone is None:
        backbone = load_backbone(cfg.backbone, cfg.weights, device=device)
        if compile_backbone:
            backbone.enable_compile()
    aux = extract(cfg.aux, backbone, cache_dir=cache_dir, skip_bad=skip_bad, batch_size=batch_size,
                  num_workers=num_workers, progress=progress)
    stages = set(stages)
    extra = {"backbone_identity": backbone.identity(), "aux_store": str(aux.root),
             "environment": environment(), "device_used": str(device)}
    if cfg.method == "free_guides":
        cfg.guides.variant = "free"
    run.path.mkdir(parents=True, exist_ok=True)
    if distributed.is_main():
        run.write_config(cfg, extra)

    if "sae" in stages:
        sae, sae_info = fit_dictionary(aux, cfg.sae, cfg.method, device, progress)
        if distributed.is_main():     # under torchrun every rank holds the same SAE; one writes it
            if sae is not None:
                sae.save(str(run.file(SAE)), {"backbone": backbone.identity(), "method": cfg.method})
            write_json(run.file("sae.json"), {"config": cfg.sae.__dict__, "method": cfg.method,
                                              "world_size": distributed.world_size(), **sae_info})
    if "guides" in stages:
        sae = load_run_sae(run, cfg, backbone.dim)
        pair, info = fit_guides(aux, dictionary_of(sae, backbone.dim), cfg.guides, device, progress)
        pair.save(str(run.file(GUIDES)), {"backbone": backbone.identity(), "method": cfg.method})
        write_json(run.file("guides.json"), {"config": cfg.guides.__dict__, **info})
    return run


def load_run_sae(run: RunDir, cfg: RunConfig, dim: int | None) -> TopKSAE | None:
    """The run's SAE (checked against the token dimension), or None for free guides."""
    if cfg.method == "free_guides":
        return None
    sae, _ = TopKSAE.load(str(run.file(SAE)), expect_dim=dim)
    return sae


class Predictor:
    """A trained run ready to score new images or stored tokens (CLI `predict`, dashboard)."""

    def __init__(self, run_dir: str | Path, device: str | torch.device = "auto", compile_backbone: bool = False,
                 backbone: Backbone | None = None):
        self.run = RunDir(run_dir)
        self.config = self.run.read_config()
        self.cfg = RunConfig.from_dict(self.config)
        self.device = resolve_device(device)
        self._backbone: Backbone | None = backbone
        self._compile = compile_backbone
        identity = self.config.get("backbone_identity", {})
        dim = int(identity.get("dim", 0)) or None
        self.sae = load_run_sae(self.run, self.cfg, dim)
        width = self.sae.width if self.sae is not None else dim
        self.guides, _ = GuidePair.load(str(self.run.file(GUIDES)), expect_width=width)
        self.dictionary = dictionary_of(self.sae, dim or 0)
        grid = tuple(identity.get("grid", (0, 0)))
        self.scorer = Scorer(self.guides.guide_vectors(self.dictionary).detach(), self.cfg.guides.tau, grid,
                             int(identity.get("image_size", 0)), self.cfg.score.aggregation,
                             self.cfg.score.lse_temperature)

    @property
    def backbone(self) -> Backbone:
        """Loaded on first use: scoring stored tokens needs no backbone."""
        if self._backbone is None:
            self._backbone = load_backbone(self.cfg.backbone, self.cfg.weights, device=self.device)
            if self._compile:
                self._backbone.enable_compile()
            if self._backbone.dim != self.dictionary.shape[0]:
                raise SPGError(f"backbone {self.cfg.backbone} gives {self._backbone.dim}-dim tokens but this run's "
                               f"dictionary is {self.dictionary.shape[0]}-dim", path=str(self.run.path),
                               fix="use the backbone the run was trained with")
        return self._backbone

    @torch.no_grad()
    def predict_images(self, images: list) -> dict[str, torch.Tensor]:
        """PIL images -> tokens `[B, N, D]`, probs `[B, N]`, maps `[B, S, S]`, scores `[B]`."""
        from .images import image_to_tensor
        bb = self.backbone
        batch = torch.stack([image_to_tensor(im, bb.image_size) for im in images]).to(self.device)
        tokens = bb.extract(batch)
        probs, maps, scores = self.scorer(tokens)
        return {"tokens": tokens.cpu(), "probs": probs.cpu(), "maps": maps.cpu(), "scores": scores.cpu()}


def evaluate_target(run: RunDir, *, target: str | None = None, cache_dir: str | Path | None = None,
                    skip_bad: bool = False, batch_size: int | None = None, num_workers: int | None = None,
                    progress: bool = True, metric_options: dict[str, Any] | None = None,
                    compile_backbone: bool = False, device: str | None = None,
                    backbone: Backbone | None = None) -> dict[str, Any]:
    """Score the target set with a trained run; write target maps, scores and metrics.json."""
    from .metrics import evaluate

    cfg = run.run_config()
    predictor = Predictor(run.path, device=device or cfg.device, compile_backbone=compile_backbone,
                          backbone=backbone)
    if target is not None and target != cfg.target:
        cfg.target = target
        run.update_config(target=target)
    store = extract(cfg.target, predictor.backbone, cache_dir=cache_dir, skip_bad=skip_bad,
                    batch_size=batch_size, num_workers=num_workers, progress=progress)
    if store.dim != predictor.dictionary.shape[0]:
        raise SPGError("target tokens and the run's dictionary differ in dimension", path=str(store.root),
                       fix="evaluate with the backbone the run was trained with")
    run.update_config(target_store=str(store.root))
    probs, scores = score_store(store, predictor.scorer, predictor.device)
    run.write_target(probs, scores, store.images, store.grid, store.image_size)
    maps = target_maps(probs, store.grid, store.image_size)
    masks = store.masks(range(store.num_images)).to(torch.uint8)
    options = {"smoothing_sigma": cfg.score.smoothing_sigma, **(metric_options or {})}
    metrics = evaluate(scores.numpy(), store.labels(), maps.numpy(), masks.numpy(),
                       [r["category"] for r in store.images], progress=progress, **options)
    metrics["settings"] = {**metrics.get("settings", {}), "aux": cfg.aux, "target": cfg.target,
                           "backbone": cfg.backbone, "method": cfg.method,
                           "aggregation": cfg.score.aggregation, "image_size": store.image_size}
    write_json(run.file("metrics.json"), metrics)
    return metrics


def run_experiment(cfg: RunConfig, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """`spg run`: both training stages on the auxiliary set, then evaluation on the target."""
    metric_options = kwargs.pop("metric_options", None)
    backbone = load_backbone(cfg.backbone, cfg.weights, device=resolve_device(cfg.device))
    if kwargs.pop("compile_backbone", False):
        backbone.enable_compile()
    run = train_stages(cfg, out, backbone=backbone, **kwargs)
    return evaluate_target(run, cache_dir=kwargs.get("cache_dir"), skip_bad=kwargs.get("skip_bad", False),
                           batch_size=kwargs.get("batch_size"), num_workers=kwargs.get("num_workers"),
                           progress=kwargs.get("progress", True), metric_options=metric_options,
                           device=cfg.device, backbone=backbone)
