"""The SPG stages end to end: extract -> SAE -> guides -> target maps -> metrics.

Each stage is a function over stored artifacts, so the CLI can run them one by
one (`spg extract`, `spg train-sae`, `spg train-guides`, `spg eval`) or all at
once (`spg run`), and the dashboard can call the same code. Inference (Scorer,
Predictor) lives in inference.py. No function here changes the configs it is given.
"""

from __future__ import annotations

import dataclasses
import itertools
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, distributed, train_checkpoint
from .atomic import file_sha256, write_json
from .backbones.base import Backbone
from .config import ExtractConfig, GuideConfig, RunConfig, SAEConfig, ScoreConfig
from .consistency import FINGERPRINT_KEY, fingerprint
from .data import open_dataset
from .devices import resolve_device
from .errors import SPGError
from .guides import GuideBatch, GuideSet, saturation_note, train_guides
from .inference import Predictor, dictionary_of, load_run_backbone, load_run_sae, score_store, target_maps
from .map_export import save_maps
from .memory import budget_bytes
from .metrics import evaluate, image_auroc
from .protocols import token_dtype
from .run_lock import command_line, run_lock
from .runs import GUIDES_FILE, GUIDES_RECORD_FILE, METRICS_FILE, SAE_FILE, SAE_RECORD_FILE, RunDir
from .sae import TopKSAE
from .sae_data import cls_chunks, sae_token_source
from .sae_sharded import train_sharded
from .sae_train import attach_dead_mask, evaluate_sae, train_sae
from .scoring import cosine_logits, patch_probabilities
from .store import TokenStore, build_store
from .thresholds import write_run_threshold
from .train_checkpoint import GUIDES_CHECKPOINT, SAE_CHECKPOINT

# -- stage 0: tokens ------------------------------------------------------------------------


def extract(spec: str, backbone: Backbone, io: ExtractConfig | None = None, *, dtype: str = "float16") -> TokenStore:
    """Open dataset `spec` (its test split) and return its (re-used, resumed or new) token store
    of `dtype` tokens ("float16", or "float32" for tokens exactly as extracted)."""
    io = io or ExtractConfig()
    dataset = open_dataset(spec, split="test", cache_dir=io.cache_dir)
    return build_store(
        dataset,
        backbone,
        dtype=dtype,
        cache_dir=io.cache_dir,
        skip_bad=io.skip_bad,
        batch_size=io.batch_size,
        num_workers=io.workers,
        progress=shows_progress(io),
    )


def shows_progress(io: ExtractConfig) -> bool:
    """Progress bars unless `quiet`, and only on the main process (one bar per job under torchrun)."""
    return not io.quiet and distributed.is_main()


# -- stage 1: dictionary --------------------------------------------------------------------


def fit_dictionary(
    store: TokenStore,
    cfg: SAEConfig,
    method: str,
    device: torch.device,
    progress: bool = True,
    *,
    max_host_memory: str | None = None,
    stream: str = "auto",
    checkpoint: Path | None = None,
) -> tuple[TopKSAE | None, dict[str, Any]]:
    """Train the SAE ('spg'), draw a random one ('random_dict'), or none ('free_guides').

    The tokens are held in memory when they fit `max_host_memory` (memory.py; `stream` "auto"),
    else streamed from the store's shards (sae_data.StreamedTokens); `stream` "always" / "never"
    forces either. `checkpoint`: the epoch-end checkpoint file a killed training resumes from."""
    if method == "free_guides":
        return None, {"trained": False, "note": "free guides: no dictionary"}
    source, feed = sae_token_source(store, cfg, budget_bytes(max_host_memory), stream)
    if method == "random_dict":
        sae = TopKSAE(store.dim, cfg.width, cfg.k, seed=cfg.seed, bias=cfg.bias).to(device)
        sae.init_bias(source.sample(source.pass_rows).to(device), cfg.init_bias)
        fit = evaluate_sae(sae, source, batch=source.pass_rows)
        return sae, {"trained": False, "note": "random unit-norm dictionary", "feed": feed, **fit}
    t0 = time.perf_counter()
    if cfg.shard == "latents":
        sae, history = train_sharded(source, cfg, store.num_patches, device)
    else:
        sae, history = train_sae(
            source,
            cfg,
            tokens_per_image=store.num_patches,
            device=device,
            progress=progress,
            checkpoint=checkpoint,
            data_key=file_sha256(store.root / "manifest.json"),
        )
    seconds = time.perf_counter() - t0
    # The mask runs over every auxiliary token the official statistic sees: patches and CLS.
    chunks = itertools.chain(source.all_chunks(source.pass_rows), cls_chunks(store, source.pass_rows))
    dead = attach_dead_mask(sae, chunks, batch=source.pass_rows)
    print(
        f"SAE: {dead} of {sae.width} atoms never fire on the auxiliary set (dead; masked out of the guides)",
        file=sys.stderr,
    )
    return sae, {
        "trained": True,
        "seconds": seconds,
        "feed": feed,
        "history": history,
        **history[-1],
        "dead_atoms": dead,
    }


# -- stage 2: guides ------------------------------------------------------------------------


def fit_guides(
    store: TokenStore,
    dictionary: torch.Tensor,
    cfg: GuideConfig,
    device: torch.device,
    progress: bool = True,
    dead: torch.Tensor | None = None,
    *,
    max_host_memory: str | None = None,
    checkpoint: Path | None = None,
) -> tuple[GuideSet, dict[str, Any]]:
    """Train guides on the auxiliary store's tokens, CLS tokens, masks and labels; `dead` `[M]`:
    the SAE's dead-atom mask (those coefficients stay 0). The tokens are held (float32) when they
    fit half of `max_host_memory` (memory.py), else each batch's images are read from the store.
    `checkpoint`: the epoch-end checkpoint file a killed training resumes from."""
    resident = store.num_images * store.num_patches * store.dim * 4 <= budget_bytes(max_host_memory) // 2
    cache = store.tokens(range(store.num_images)).to(device) if resident else None
    labels = torch.from_numpy(store.labels())

    def get_batch(idx: torch.Tensor) -> GuideBatch:
        idx = idx.tolist()
        tokens = cache[idx] if cache is not None else store.tokens(idx)
        return GuideBatch(tokens, store.masks(idx), labels[idx], store.cls(idx))

    t0 = time.perf_counter()
    pair, history = train_guides(
        dictionary,
        get_batch,
        store.num_images,
        store.grid,
        cfg,
        device=device,
        progress=progress,
        dead=dead,
        checkpoint=checkpoint,
        data_key=file_sha256(store.root / "manifest.json"),
    )
    seconds = time.perf_counter() - t0
    a_n, a_a = pair.active_atoms()
    guides = pair.guide_vectors(dictionary.to(device)).detach()
    fit = auxiliary_fit(get_batch, store.num_images, store.grid, guides, cfg.tau, device)
    note = saturation_note(fit, asdict(cfg))
    if note:
        warnings.warn(note, stacklevel=2)
    return pair, {
        "seconds": seconds,
        "history": history,
        "active_normal": len(a_n),
        "active_anomaly": len(a_a),
        "aux_fit": fit,
    }


@torch.no_grad()
def auxiliary_fit(
    get_batch: Callable[[torch.Tensor], GuideBatch],
    num_images: int,
    grid: tuple[int, int],
    guides: torch.Tensor,
    tau: float,
    device: torch.device,
    covered: float = 0.5,
) -> dict[str, float]:
    """How the saved (EMA) guides `[2, D]` separate the auxiliary set they were trained on.

    `get_batch` is the training one (a GuideBatch). A patch is a
    defect patch when its mask covers at least `covered` of it. Returns the patch AUROC
    (defect vs normal patches), the median p(anomaly) on each, the normal patches' 99th
    percentile and the fraction of each above 0.5. Training under focal loss keeps p low on
    rare positives, so calibration is judged by the medians, not by 0.5.
    """
    defect, normal = [], []
    for start in range(0, num_images, 64):
        batch = get_batch(torch.arange(start, min(start + 64, num_images)))
        tokens, masks = batch.tokens.to(device), batch.masks
        logits = cosine_logits(tokens, guides)
        probs = patch_probabilities(logits[..., 0], logits[..., 1], tau).cpu()
        labels = F.adaptive_avg_pool2d(masks[:, None].float(), grid)[:, 0].flatten(1) >= covered
        defect.append(probs[labels])
        normal.append(probs[~labels])
    d, n = torch.cat(defect).double(), torch.cat(normal).double()

    def stat(x: torch.Tensor, fn) -> float:
        return float(fn(x)) if len(x) else float("nan")

    auroc = (
        image_auroc(torch.cat([d, n]).numpy(), np.r_[np.ones(len(d)), np.zeros(len(n))])
        if len(d) and len(n)
        else float("nan")
    )
    return {
        "patch_auroc": auroc,
        "p_defect_median": stat(d, torch.median),
        "p_normal_median": stat(n, torch.median),
        "p_normal_q99": stat(n, lambda x: x.kthvalue(max(1, int(0.99 * len(x)))).values),
        "defect_patches_flagged": stat(d, lambda x: (x > 0.5).double().mean()),
        "normal_patches_flagged": stat(n, lambda x: (x > 0.5).double().mean()),
        "defect_patches": len(d),
        "normal_patches": len(n),
    }


# -- whole runs -----------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    import transformers  # noqa: PLC0415 -- heavy (seconds): imported only to record its version

    return {
        "spg_core": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def train_stages(
    cfg: RunConfig,
    out: str | Path,
    io: ExtractConfig | None = None,
    *,
    stages: Iterable[str] = ("sae", "guides"),
    backbone: Backbone | None = None,
) -> RunDir:
    """Stages 1 and 2 on the auxiliary set, writing config, SAE and guides into `out`.

    With the "sae" stage, config.json is written afresh (a new run); a guides-only call
    updates its `guides` section and keeps every other key. `backbone`: an already loaded
    one (so `spg run` loads the model once for both sets). Holds the folder's write lock.
    Each training stage keeps an epoch-end checkpoint in `out` (SAE_CHECKPOINT,
    GUIDES_CHECKPOINT) while it runs, so the same command after a kill resumes it, and deletes
    it once its artifacts are written. `io.max_host_memory`, `io.stream`: fit_dictionary's and
    fit_guides' memory budget."""
    cfg = effective_config(cfg)
    io = io or ExtractConfig()
    progress = shows_progress(io)
    run = RunDir(out)
    with run_lock(out, command_line()):
        device = resolve_device(cfg.device)
        backbone = backbone or load_run_backbone(cfg, device, compile=io.compile)
        aux = extract(cfg.aux, backbone, io, dtype=token_dtype(cfg.protocol, cfg.token_dtype))
        stages = set(stages)
        run.path.mkdir(parents=True, exist_ok=True)
        settings = cfg.to_dict()
        sae_fp = {FINGERPRINT_KEY: fingerprint(settings, "sae")}
        if "sae" in stages:
            if distributed.is_main():
                run.write_config(
                    cfg,
                    {
                        "backbone_identity": backbone.identity(),
                        "aux_store": str(aux.root),
                        "environment": environment(),
                        "device_used": str(device),
                    },
                )
            sae, sae_info = fit_dictionary(
                aux,
                cfg.sae,
                cfg.method,
                device,
                progress,
                max_host_memory=io.max_host_memory,
                stream=io.stream,
                checkpoint=run.file(SAE_CHECKPOINT),
            )
            if distributed.is_main():  # under torchrun every rank holds the same SAE; one writes it
                if sae is not None:
                    sae.save(
                        str(run.file(SAE_FILE)),
                        {"backbone": backbone.identity(), "method": cfg.method, **sae_fp},
                    )
                write_json(
                    run.file(SAE_RECORD_FILE),
                    {
                        "config": asdict(cfg.sae),
                        "method": cfg.method,
                        "world_size": distributed.world_size(),
                        **sae_fp,
                        **sae_info,
                    },
                )
                train_checkpoint.remove(run.file(SAE_CHECKPOINT))
        elif distributed.is_main():
            run.update_config(guides=asdict(cfg.guides))
        if "guides" in stages:
            sae = load_run_sae(run, cfg, backbone.dim)
            dead = None if sae is None else sae.dead
            pair, info = fit_guides(
                aux,
                dictionary_of(sae, backbone.dim),
                cfg.guides,
                device,
                progress,
                dead=dead,
                max_host_memory=io.max_host_memory,
                checkpoint=run.file(GUIDES_CHECKPOINT),
            )
            before = run.digest(GUIDES_FILE)
            guides_fp = {FINGERPRINT_KEY: fingerprint(settings, "guides")}
            pair.save(str(run.file(GUIDES_FILE)), {"backbone": backbone.identity(), "method": cfg.method, **guides_fp})
            write_json(
                run.file(GUIDES_RECORD_FILE),
                {
                    "config": asdict(cfg.guides),
                    **guides_fp,
                    **info,
                    "provenance": {"sae_sha256": run.digest(SAE_FILE)},
                },
            )
            train_checkpoint.remove(run.file(GUIDES_CHECKPOINT))
            # Only where the maps and metrics on disk came from other guides (not after a fresh run's training).
            if before is not None and METRICS_FILE in run.stale_artifacts():
                print(
                    "note: the guides changed, so this run's target maps and metrics are stale; "
                    f"re-run `spg eval --run {run.path}`",
                    file=sys.stderr,
                )

            write_run_threshold(run.path, device=str(device))
    return run


def effective_config(cfg: RunConfig) -> RunConfig:
    """The config a run records: `--method free_guides` implies free guides of the pair form."""
    if cfg.method == "free_guides":
        return dataclasses.replace(cfg, guides=dataclasses.replace(cfg.guides, variant="free", form="pair"))
    return cfg


def evaluate_target(
    run: RunDir,
    io: ExtractConfig | None = None,
    *,
    target: str | None = None,
    metric_options: dict[str, Any] | None = None,
    device: str | None = None,
    backbone: Backbone | None = None,
    score: ScoreConfig | None = None,
    save_maps_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score the target set with a trained run; write target maps, scores and metrics.json, and
    record the target evaluated (`target`, `target_store`) in config.json. `save_maps_dir`: also
    write each image's final map there (map_export.py).

    `score`: scoring settings for this evaluation (default: the run's own); `metric_options`
    override evaluate()'s (default smoothing: the score settings' sigma). Holds the run's write lock."""
    io = io or ExtractConfig()
    with run_lock(run.path, command_line()):
        cfg = run.run_config()
        predictor = Predictor(
            run.path, device=device or cfg.device, compile_backbone=io.compile, backbone=backbone, score=score
        )
        score = predictor.cfg.score
        target = target or cfg.target
        store = extract(target, predictor.backbone, io, dtype=token_dtype(cfg.protocol, cfg.token_dtype))
        if store.dim != predictor.dictionary.shape[0]:
            raise SPGError(
                "target tokens and the run's dictionary differ in dimension",
                path=str(store.root),
                fix="evaluate with the backbone the run was trained with",
            )
        run.update_config(target=target, target_store=str(store.root))
        provenance = {
            "guides_sha256": run.digest(GUIDES_FILE),
            "target_store_manifest_sha256": file_sha256(store.root / "manifest.json"),
            FINGERPRINT_KEY: fingerprint(run.read_config(), "target"),
        }
        probs, scores = score_store(store, predictor.scorer, predictor.device)
        run.write_target(probs, scores, store.images, store.grid, store.image_size, provenance)
        maps = target_maps(probs, store.grid, store.image_size)
        masks = store.masks(range(store.num_images)).to(torch.uint8)
        options = {"smoothing_sigma": score.smoothing_sigma, **(metric_options or {})}
        if save_maps_dir is not None:
            save_maps(save_maps_dir, maps, scores, store.images, options["smoothing_sigma"])
        metrics = evaluate(
            scores.numpy(),
            store.labels(),
            maps.numpy(),
            masks.numpy(),
            [r["category"] for r in store.images],
            progress=shows_progress(io),
            **options,
        )
        metrics["settings"] = {
            **metrics.get("settings", {}),
            "aux": cfg.aux,
            "target": target,
            "backbone": cfg.backbone,
            "method": cfg.method,
            "protocol": cfg.protocol,
            "aggregation": score.aggregation,
            "image_score": score.image_score,
            "context": {"form": score.context_form, "weight": score.context_weight} if score.context else None,
            "image_size": store.image_size,
        }
        metrics["provenance"] = provenance
        write_json(run.file(METRICS_FILE), metrics)
    return metrics


def run_experiment(
    cfg: RunConfig, out: str | Path, io: ExtractConfig | None = None, *, metric_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`spg run`: both training stages on the auxiliary set, then evaluation on the target."""
    io = io or ExtractConfig()
    backbone = load_run_backbone(cfg, resolve_device(cfg.device), compile=io.compile)
    run = train_stages(cfg, out, io, backbone=backbone)
    return evaluate_target(run, io, metric_options=metric_options, device=cfg.device, backbone=backbone)
