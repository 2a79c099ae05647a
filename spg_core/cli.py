"""`spg` command line: thin wrappers over spg_core's stages.

User mistakes surface as SPGError and are printed as one clear message (exit 2);
Ctrl-C exits 130 saying which artifacts the run holds and which it does not (every
artifact is written atomically, so none is half-written).

Option defaults come from the run's protocol (protocols.py) over the config dataclasses:
an option left out takes the protocol's value, so help texts give both protocols' defaults.
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


# Options that set a config field: (flag, section, field, type, help). Their defaults come from the
# protocol (protocols.py) over the dataclasses (config.py); an option given on the command line wins.
SAE_OPTIONS = [
    ("--width", "sae", "width", int, "SAE dictionary width M"),
    ("--k", "sae", "k", int, "SAE TopK k"),
    ("--sae-epochs", "sae", "epochs", int, "SAE training epochs"),
    ("--sae-lr", "sae", "lr", float, "SAE Adam learning rate"),
    ("--sae-batch-images", "sae", "batch_images", int, "images' tokens per SAE step"),
    ("--auxk", "sae", "auxk", int, "k_aux of the AuxK loss (0 = off)"),
    ("--auxk-dead-tokens", "sae", "auxk_dead_tokens", int,
     "AuxK: a latent is dead after this many tokens' worth of steps without firing"),
]
GUIDE_OPTIONS = [
    ("--guide-variant", "guides", "variant", str, "relu_l1 or topk (TopK_K per guide)"),
    ("--l1", "guides", "l1", float, "lambda of the L1 penalty"),
    ("--guide-topk", "guides", "topk", int, "K per guide for --guide-variant topk"),
    ("--guide-epochs", "guides", "epochs", int, "guide training epochs"),
    ("--guide-lr", "guides", "lr", float, "guide Adam learning rate"),
    ("--guide-batch-images", "guides", "batch_images", int, "images per guide step"),
    ("--tau", "guides", "tau", float, "softmax temperature"),
    ("--ema", "guides", "ema_decay", float, "EMA decay of the guide coefficients"),
    ("--dice", "guides", "dice", str, "Dice over the whole batch (batch) or averaged per image (image)"),
]
SCORE_OPTIONS = [
    ("--aggregation", "score", "aggregation", str, "image score pooling of the map: max, mean or lse"),
    ("--lse-t", "score", "lse_temperature", float, "temperature T of log-sum-exp pooling"),
    ("--smoothing-sigma", "score", "smoothing_sigma", float,
     "Gaussian sigma of the maps before pixel metrics (0 = off); `spg eval`: default the run's own"),
    ("--image-score", "score", "image_score", str,
     "map (pool the raw map), smoothed_map (pool the smoothed map; official), or cls (the official global "
     "guides on the CLS token)"),
]
CHOICES = {"guides.variant": ["relu_l1", "topk"], "guides.dice": ["batch", "image"],
           "score.aggregation": ["max", "mean", "lse"], "score.image_score": ["map", "smoothed_map", "cls"]}


def _protocol_defaults(section: str, name: str) -> str:
    """'studio X, official Y' for an option's help."""
    from .protocols import PROTOCOLS, overrides

    base = {"sae": SAEConfig(), "guides": GuideConfig(), "score": ScoreConfig()}[section]
    values = [f"{p} {overrides(p).get(section, {}).get(name, getattr(base, name))}" for p in PROTOCOLS]
    return "default: " + ", ".join(values)


def _add_options(p: argparse.ArgumentParser, options: list[tuple[str, str, str, type, str]]) -> None:
    for flag, section, name, kind, text in options:
        p.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f"{section}.{name}"),
                       help=f"{text} ({_protocol_defaults(section, name)})")


def _add_protocol(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", default=None, choices=["official", "studio"],
                   help="settings preset: official (the authors' code, step for step; default for the paper "
                        "backbones) or studio (this project's; default for builtin and CPU backbones)")


def _add_sae(p: argparse.ArgumentParser) -> None:
    _add_options(p, SAE_OPTIONS)
    p.add_argument("--seed", type=int, default=None, help="seed of both stages (default: studio 0, official 111)")
    p.add_argument("--method", default="spg", choices=["spg", "free_guides", "random_dict"],
                   help="spg, or an ablation baseline: free guides in R^D, or SPG on a random dictionary")


def _add_guides(p: argparse.ArgumentParser) -> None:
    _add_options(p, GUIDE_OPTIONS)


def _add_score(p: argparse.ArgumentParser) -> None:
    _add_options(p, SCORE_OPTIONS)
    p.add_argument("--aupro", default="mvtec", choices=["mvtec", "official"],
                   help="the headline AUPRO: exact MVTec AD (default) or the official SPG code's 200-threshold "
                        "one; both are always reported, as `aupro` and `aupro_official`")


def _explicit(args: argparse.Namespace, options: list[tuple[str, str, str, type, str]]) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} for the options given on the command line."""
    out: dict[str, dict[str, Any]] = {}
    for flag, section, name, _, _ in options:
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            out.setdefault(section, {})[name] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _config_from(args: argparse.Namespace) -> RunConfig:
    """The run's config: dataclass defaults < the protocol's settings < explicit options."""
    from .protocols import check_protocol, default_protocol, overrides

    protocol = check_protocol(args.protocol or default_protocol(args.backbone))
    d = _merge(overrides(protocol), _explicit(args, SAE_OPTIONS + GUIDE_OPTIONS + SCORE_OPTIONS))
    if args.seed is not None:
        d = _merge(d, {"sae": {"seed": args.seed}, "guides": {"seed": args.seed}})
    d.update(aux=args.aux, target=getattr(args, "target", None) or RunConfig.target, backbone=args.backbone,
             weights=args.weights, method=args.method, device=args.device, protocol=protocol)
    return RunConfig.from_dict(d)


def _guides_for(run_cfg: RunConfig, args: argparse.Namespace) -> GuideConfig:
    """`spg train-guides`: the run's guide settings (or a new protocol's) < explicit options."""
    from dataclasses import asdict

    from .protocols import check_protocol, overrides

    base = asdict(run_cfg.guides)
    if args.protocol is not None:
        base = {**asdict(GuideConfig()), **overrides(check_protocol(args.protocol)).get("guides", {})}
        base["seed"] = run_cfg.sae.seed
    return RunConfig.from_dict({"guides": {**base, **_explicit(args, GUIDE_OPTIONS).get("guides", {})}}).guides


def _io_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"cache_dir": args.cache_dir, "skip_bad": args.skip_bad, "batch_size": args.batch_size,
            "num_workers": args.workers, "progress": not args.quiet and distributed.is_main(),
            "compile_backbone": args.compile}


def _check_out_dir(path: str) -> None:
    """`--out` must name a directory (new or existing), not a file."""
    from pathlib import Path

    if Path(path).exists() and not Path(path).is_dir():
        raise SPGError("--out names an existing file, not a directory", path=path,
                       fix="pass a new or existing directory for the run")


# -- commands --------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import run_experiment
    from .report import print_metrics, write_reports

    _check_out_dir(args.out)
    cfg = _config_from(args)
    print(f"protocol: {cfg.protocol}", file=sys.stderr)
    if distributed.world_size() > 1:
        metrics = _run_distributed(cfg, args)
        if metrics is None:
            return
    else:
        metrics = run_experiment(cfg, args.out, metric_options={"aupro_variant": args.aupro}, **_io_kwargs(args))
    write_reports(args.out)
    print_metrics(metrics, title=f"{cfg.aux} -> {cfg.target} [{cfg.backbone}, {cfg.method}, {cfg.protocol}]")
    print(f"run directory: {args.out}")


def _run_distributed(cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any] | None:
    """`spg run` under torchrun: both token stores and the SAE by every rank; guides, target maps and
    metrics (minutes, not hours) by rank 0 alone. The metrics on rank 0, None on the others."""
    from .backbones.base import resolve_device
    from .pipeline import evaluate_target, extract, load_run_backbone, train_stages

    io = _io_kwargs(args)
    backbone = load_run_backbone(cfg, resolve_device(cfg.device))
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
    from .protocols import default_protocol

    backbone = load_backbone(args.backbone, args.weights, device=args.device,
                             protocol=args.protocol or default_protocol(args.backbone))
    if args.compile:
        backbone.enable_compile()
    store = extract(args.dataset, backbone, cache_dir=args.cache_dir, skip_bad=args.skip_bad,
                    batch_size=args.batch_size, num_workers=args.workers,
                    progress=not args.quiet and distributed.is_main())
    if distributed.is_main():
        print(f"{store.num_images} images x {store.num_patches} tokens x {store.dim} dims -> {store.root}")


def cmd_train_sae(args: argparse.Namespace) -> None:
    from .pipeline import train_stages

    _check_out_dir(args.out)
    run = train_stages(_config_from(args), args.out, stages=("sae",), **_io_kwargs(args))
    if distributed.is_main():
        print(f"SAE written to {run.file('sae.safetensors')}")


def cmd_train_guides(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .pipeline import train_stages
    from .runs import RunDir

    cfg = RunDir(args.run).run_config()
    cfg = replace(cfg, guides=_guides_for(cfg, args))
    run = train_stages(cfg, args.run, stages=("guides",), **_io_kwargs(args))
    print(f"guides written to {run.file('guides.safetensors')}")


def cmd_eval(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from .pipeline import evaluate_target
    from .report import print_metrics, write_reports
    from .runs import RunDir

    run = RunDir(args.run)
    score = run.run_config().score
    given = _explicit(args, SCORE_OPTIONS).get("score", {})
    metrics = evaluate_target(run, target=args.target, metric_options={"aupro_variant": args.aupro},
                              score=replace(score, **given), **_io_kwargs(args))
    write_reports(args.run)
    print_metrics(metrics, title=f"{metrics['settings']['aux']} -> {metrics['settings']['target']}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import predict_files

    _check_out_dir(args.out)
    rows, skipped = predict_files(args.run, args.images, args.out, device=args.device, skip_bad=args.skip_bad,
                                  max_pixels=args.max_pixels)
    width = max((len(r["image"]) for r in rows), default=0)
    for r in rows:
        print(f"{r['image']:<{width}}  score {r['score']:.4f}  map {r['map']}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s); see {args.out}/skipped.json", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from .images import MAX_IMAGE_PIXELS

    parser = argparse.ArgumentParser(prog="spg", description="SPG Studio: zero-shot anomaly detection with sparse-projected guides")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole experiment: tokens, SAE, guides, target maps, metrics")
    p.add_argument("--aux", required=True, help=f"auxiliary dataset ({DATASET_HELP})")
    p.add_argument("--target", required=True, help=f"target dataset ({DATASET_HELP})")
    p.add_argument("--out", required=True, help="run directory to write")
    for add in (_add_protocol, _add_backbone, _add_sae, _add_guides, _add_score, _add_common):
        add(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("extract", help="extract and store a dataset's patch tokens")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    for add in (_add_protocol, _add_backbone, _add_common):
        add(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train-sae", help="stage 1: train the TopK SAE on auxiliary tokens into a run directory")
    p.add_argument("--aux", required=True, help=DATASET_HELP)
    p.add_argument("--out", required=True, help="run directory to write")
    for add in (_add_protocol, _add_backbone, _add_sae, _add_guides, _add_score, _add_common):
        add(p)
    p.set_defaults(func=cmd_train_sae)

    p = sub.add_parser("train-guides", help="stage 2: train guide coefficients for a run that has an SAE")
    p.add_argument("--run", required=True, help="run directory (from spg train-sae)")
    p.add_argument("--protocol", default=None, choices=["official", "studio"],
                   help="take the guide settings of this protocol (default: the run's own guide settings)")
    _add_guides(p)
    _add_common(p)
    p.set_defaults(func=cmd_train_guides)

    p = sub.add_parser("eval", help="score a target dataset with a trained run and write metrics and reports")
    p.add_argument("--run", required=True)
    p.add_argument("--target", default=None, help=f"target dataset (default: the run's; {DATASET_HELP})")
    _add_score(p)
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="anomaly map PNG and score for new images")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions", help="folder for map PNGs and scores.csv")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable or oversized images, listing them in OUT/skipped.json")
    p.add_argument("--max-pixels", type=int, default=MAX_IMAGE_PIXELS,
                   help=f"refuse images with more pixels than this (default {MAX_IMAGE_PIXELS:,})")
    p.set_defaults(func=cmd_predict)

    for register in _room_commands():
        register(sub)
    return parser


def _room_commands() -> list[Callable[[Any], None]]:
    """Commands whose code lives in its own room: sweeps, selection, atoms, reports, the dashboard launcher, imports."""
    from . import atoms_cli, launch, report_html, select, sweep
    from .interop import cli as interop_cli
    return [sweep.register_cli, select.register_cli, atoms_cli.register_cli, report_html.register_cli,
            launch.register_cli, interop_cli.register_cli]


def interrupted_note(args: argparse.Namespace) -> str:
    """What a Ctrl-C left behind, truthfully: which of the run's artifacts exist (each written
    whole: temp file, then rename) and which do not."""
    from pathlib import Path

    from .runs import (CONFIG_FILE, GUIDES_FILE, METRICS_FILE, PATCH_MAPS_FILE, SAE_FILE, RunDir)

    folder = getattr(args, "run", None) or getattr(args, "out", None)
    if not folder or not Path(folder).is_dir() or args.command not in ("run", "train-sae", "train-guides", "eval"):
        return "interrupted: no file is half-written (each is written whole); re-run the command to finish"
    run = RunDir(folder)
    names = {CONFIG_FILE: "config", SAE_FILE: "SAE", GUIDES_FILE: "guides", PATCH_MAPS_FILE: "target maps",
             METRICS_FILE: "metrics"}
    present = [label for f, label in names.items() if run.exists(f)]
    missing = [label for f, label in names.items() if not run.exists(f)]
    try:
        stale = run.stale_artifacts()
    except SPGError:
        stale = []
    text = (f"interrupted: {folder} holds {', '.join(present) or 'nothing yet'}"
            + (f"; not done: {', '.join(missing)}" if missing else "")
            + (f"; made from earlier inputs (stale): {', '.join(stale)}" if stale else "")
            + ". No file is half-written; re-run the command to finish (token extraction resumes).")
    return text


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
        print(interrupted_note(args), file=sys.stderr)
        return 130
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
