"""`spg` command line: thin wrappers over spg_core's stages.

User mistakes surface as SPGError and are printed as one clear message (exit 2);
Ctrl-C exits 130 with nothing half-written (every artifact is written atomically).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from . import distributed
from .config import GuideConfig, RunConfig, SAEConfig, ScoreConfig
from .errors import SPGError

DATASET_HELP = "mvtec:PATH | visa:PATH | folder:PATH | synthetic-a | synthetic-b"
# Commands that run as one job over every process torchrun starts (docs/SCALING.md).
COLLECTIVE_COMMANDS = ("extract", "train-sae", "atoms", "run")


# -- shared options --------------------------------------------------------------------------

def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--cache-dir", default=None, help="token stores and synthetic data (default $SPG_CACHE or ~/.cache/spg)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images, writing skipped.json in the store")
    p.add_argument("--batch-size", type=int, default=None, help="extraction batch size (default 64 on GPU, 8 on CPU)")
    p.add_argument("--workers", type=int, default=None, help="image decoding workers")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone (faster extraction on CUDA)")


def _add_backbone(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", default=RunConfig.backbone,
                   help="dinov3-vitl16 (default), dinov2-large, siglip-large, openclip-vitl14-336, builtin; "
                        "NAME-tiny / NAME-random: random-initialised small / full-size models")
    p.add_argument("--weights", default=None, help="hub id, local directory or checkpoint file (default: the registry's)")


def _add_sae(p: argparse.ArgumentParser) -> None:
    d = SAEConfig()
    p.add_argument("--width", type=int, default=d.width, help=f"SAE dictionary width M (default {d.width})")
    p.add_argument("--k", type=int, default=d.k, help=f"SAE TopK k (default {d.k})")
    p.add_argument("--sae-epochs", type=int, default=d.epochs)
    p.add_argument("--sae-lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--method", default="spg", choices=["spg", "free_guides", "random_dict"],
                   help="spg, or an ablation baseline: free guides in R^D, or SPG on a random dictionary")


def _add_guides(p: argparse.ArgumentParser) -> None:
    d = GuideConfig()
    p.add_argument("--guide-variant", default=d.variant, choices=["relu_l1", "topk"])
    p.add_argument("--l1", type=float, default=d.l1, help=f"lambda of the L1 penalty (default {d.l1})")
    p.add_argument("--guide-topk", type=int, default=d.topk, help="K per guide for --guide-variant topk")
    p.add_argument("--guide-epochs", type=int, default=d.epochs)
    p.add_argument("--guide-lr", type=float, default=d.lr)
    p.add_argument("--tau", type=float, default=d.tau)
    p.add_argument("--ema", type=float, default=d.ema_decay)
    p.add_argument("--dice", default=d.dice, choices=["batch", "image"],
                   help="Dice over the whole batch (default) or averaged per image")


def _add_score(p: argparse.ArgumentParser) -> None:
    d = ScoreConfig()
    p.add_argument("--aggregation", default=d.aggregation, choices=["max", "mean", "lse"])
    p.add_argument("--lse-t", type=float, default=d.lse_temperature, help="temperature T of log-sum-exp pooling")
    p.add_argument("--smoothing-sigma", type=float, default=d.smoothing_sigma,
                   help="Gaussian sigma applied to maps before pixel metrics (0 = off; 4 is common in the literature)")
    p.add_argument("--aupro", default="mvtec", choices=["mvtec", "anomalyclip"],
                   help="AUPRO definition: exact MVTec AD (default) or AnomalyCLIP's 200-threshold variant")


def _guides_from(args: argparse.Namespace, seed: int) -> GuideConfig:
    return GuideConfig(variant=args.guide_variant, l1=args.l1, topk=args.guide_topk, epochs=args.guide_epochs,
                       lr=args.guide_lr, tau=args.tau, ema_decay=args.ema, dice=args.dice, seed=seed)


def _config_from(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        aux=args.aux, target=getattr(args, "target", None) or RunConfig.target, backbone=args.backbone,
        weights=args.weights, method=args.method, device=args.device,
        sae=SAEConfig(width=args.width, k=args.k, epochs=args.sae_epochs, lr=args.sae_lr, seed=args.seed),
        guides=_guides_from(args, args.seed),
        score=ScoreConfig(aggregation=args.aggregation, lse_temperature=args.lse_t,
                          smoothing_sigma=args.smoothing_sigma),
    )


def _io_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"cache_dir": args.cache_dir, "skip_bad": args.skip_bad, "batch_size": args.batch_size,
            "num_workers": args.workers, "progress": not args.quiet and distributed.is_main(),
            "compile_backbone": args.compile}


# -- commands --------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import run_experiment
    from .report import print_metrics, write_reports

    cfg = _config_from(args)
    if distributed.world_size() > 1:
        metrics = _run_distributed(cfg, args)
        if metrics is None:
            return
    else:
        metrics = run_experiment(cfg, args.out, metric_options={"aupro_variant": args.aupro}, **_io_kwargs(args))
    write_reports(args.out)
    print_metrics(metrics, title=f"{cfg.aux} -> {cfg.target} [{cfg.backbone}, {cfg.method}]")
    print(f"run directory: {args.out}")


def _run_distributed(cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any] | None:
    """`spg run` under torchrun: both token stores and the SAE by every rank; guides, target maps and
    metrics (minutes, not hours) by rank 0 alone. The metrics on rank 0, None on the others."""
    from .backbones import load_backbone
    from .backbones.base import resolve_device
    from .pipeline import evaluate_target, extract, train_stages

    io = _io_kwargs(args)
    backbone = load_backbone(cfg.backbone, cfg.weights, device=resolve_device(cfg.device))
    if io.pop("compile_backbone"):
        backbone.enable_compile()
    run = train_stages(cfg, args.out, stages=("sae",), backbone=backbone, **io)
    extract(cfg.target, backbone, **{k: io[k] for k in ("cache_dir", "skip_bad", "batch_size", "num_workers",
                                                         "progress")})
    if not distributed.is_main():
        return None
    with distributed.main_only():
        train_stages(cfg, args.out, stages=("guides",), backbone=backbone, **io)
        return evaluate_target(run, metric_options={"aupro_variant": args.aupro}, device=cfg.device,
                               backbone=backbone, **io)


def cmd_extract(args: argparse.Namespace) -> None:
    from .backbones import load_backbone
    from .pipeline import extract

    backbone = load_backbone(args.backbone, args.weights, device=args.device)
    if args.compile:
        backbone.enable_compile()
    store = extract(args.dataset, backbone, cache_dir=args.cache_dir, skip_bad=args.skip_bad,
                    batch_size=args.batch_size, num_workers=args.workers,
                    progress=not args.quiet and distributed.is_main())
    if distributed.is_main():
        print(f"{store.num_images} images x {store.num_patches} tokens x {store.dim} dims -> {store.root}")


def cmd_train_sae(args: argparse.Namespace) -> None:
    from .pipeline import train_stages

    run = train_stages(_config_from(args), args.out, stages=("sae",), **_io_kwargs(args))
    if distributed.is_main():
        print(f"SAE written to {run.file('sae.safetensors')}")


def cmd_train_guides(args: argparse.Namespace) -> None:
    from .pipeline import train_stages
    from .runs import RunDir

    cfg = RunDir(args.run).run_config()
    cfg.guides = _guides_from(args, cfg.sae.seed)
    run = train_stages(cfg, args.run, stages=("guides",), **_io_kwargs(args))
    print(f"guides written to {run.file('guides.safetensors')}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .pipeline import evaluate_target
    from .report import print_metrics, write_reports
    from .runs import RunDir

    run = RunDir(args.run)
    metrics = evaluate_target(run, target=args.target, metric_options={"aupro_variant": args.aupro,
                                                                       "smoothing_sigma": args.smoothing_sigma},
                              **_io_kwargs(args))
    write_reports(args.run)
    print_metrics(metrics, title=f"{metrics['settings']['aux']} -> {metrics['settings']['target']}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import predict_files

    rows = predict_files(args.run, args.images, args.out, device=args.device)
    width = max(len(r["image"]) for r in rows)
    for r in rows:
        print(f"{r['image']:<{width}}  score {r['score']:.4f}  map {r['map']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spg", description="SPG Studio: zero-shot anomaly detection with sparse-projected guides")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole experiment: tokens, SAE, guides, target maps, metrics")
    p.add_argument("--aux", required=True, help=f"auxiliary dataset ({DATASET_HELP})")
    p.add_argument("--target", required=True, help=f"target dataset ({DATASET_HELP})")
    p.add_argument("--out", required=True, help="run directory to write")
    for add in (_add_backbone, _add_sae, _add_guides, _add_score, _add_common):
        add(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("extract", help="extract and store a dataset's patch tokens")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    _add_backbone(p)
    _add_common(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train-sae", help="stage 1: train the TopK SAE on auxiliary tokens into a run directory")
    p.add_argument("--aux", required=True, help=DATASET_HELP)
    p.add_argument("--out", required=True, help="run directory to write")
    for add in (_add_backbone, _add_sae, _add_guides, _add_score, _add_common):
        add(p)
    p.set_defaults(func=cmd_train_sae)

    p = sub.add_parser("train-guides", help="stage 2: train guide coefficients for a run that has an SAE")
    p.add_argument("--run", required=True, help="run directory (from spg train-sae)")
    _add_guides(p)
    _add_common(p)
    p.set_defaults(func=cmd_train_guides)

    p = sub.add_parser("eval", help="score a target dataset with a trained run and write metrics and reports")
    p.add_argument("--run", required=True)
    p.add_argument("--target", default=None, help=f"target dataset (default: the run's; {DATASET_HELP})")
    p.add_argument("--smoothing-sigma", type=float, default=0.0)
    p.add_argument("--aupro", default="mvtec", choices=["mvtec", "anomalyclip"])
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="anomaly map PNG and score for new images")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions", help="folder for map PNGs and scores.csv")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_predict)

    for register in _room_commands():
        register(sub)
    return parser


def _room_commands() -> list[Callable[[Any], None]]:
    """Commands whose code lives in its own room: sweeps, atoms, the dashboard launcher."""
    from . import atoms_cli, launch, sweep
    return [sweep.register_cli, atoms_cli.register_cli, launch.register_cli]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        if distributed.launched_by_torchrun():
            if args.command not in COLLECTIVE_COMMANDS:
                raise SPGError(f"`spg {args.command}` runs in one process",
                               fix=f"launch it without torchrun (torchrun runs: {', '.join(COLLECTIVE_COMMANDS)})")
            # NCCL needs CUDA tensors: a CPU job on a GPU machine talks over gloo.
            distributed.init_from_env("gloo" if getattr(args, "device", "auto") == "cpu" else None)
        func(args)
    except SPGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished artifacts are kept, nothing half-written was left", file=sys.stderr)
        return 130
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
