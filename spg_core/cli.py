"""`spg` command line: thin wrappers over spg_core's stages.

User mistakes surface as SPGError and are printed as one clear message (exit 2);
Ctrl-C exits 130 saying which artifacts the run holds and which it does not (every
artifact is written atomically, so none is half-written).

Options that set a config field are generated from the config dataclasses (options.py);
their defaults come from the run's preset (protocols.py), which the backbone's family picks
unless --preset names one: an option left out takes the preset's value, so help texts give
every preset's default.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from . import atoms_cli, distributed, launch, report_html, select, sweep
from .atomic import disk_error
from .backbones import check_backbone_image_size, load_backbone
from .config import ExtractConfig, GuideConfig, RunConfig, SAEConfig, ScoreConfig, config_warnings
from .consistency import inconsistent_artifacts, require_consistent
from .context import resolve_context, with_overrides
from .devices import resolve_device
from .errors import SPGError
from .images import MAX_IMAGE_PIXELS
from .inference import load_run_backbone
from .interop import cli as interop_cli
from .options import (
    add_field_options,
    add_preset_option,
    add_section_options,
    config_from_args,
    field_values,
    merged,
    preset_defaults,
    preset_of,
    preset_sections,
    section_overrides,
)
from .pipeline import effective_config, evaluate_target, extract, run_experiment, train_stages
from .predict import predict_files
from .protocols import PROTOCOLS, check_protocol, overrides, token_dtype
from .report import print_metrics, write_reports
from .run_lock import command_line, run_lock
from .run_staging import build_folder, staging_path
from .runs import CONFIG_FILE, GUIDES_FILE, METRICS_FILE, PATCH_MAPS_FILE, SAE_FILE, SAE_RECORD_FILE, RunDir

DATASET_HELP = "mvtec:PATH | visa:PATH | folder:PATH | synthetic-a | synthetic-b"
# Commands that run as one job over every process torchrun starts (docs/SCALING.md).
COLLECTIVE_COMMANDS = ("extract", "train-sae", "atoms", "run")
# The score options `spg predict` takes (the rest of its scoring is the run's own).
CONTEXT_FIELDS = ("context", "context_form", "context_weight", "context_select")


# -- shared options --------------------------------------------------------------------------
# Every option that sets a config field is generated from its dataclass (options.py, config.py).


def _add_common(p: argparse.ArgumentParser, *, device: str | None = None) -> None:
    """--device (with `device`: what a left-out --device means) and the extraction options."""
    add_field_options(p, RunConfig, ["device"], omitted=device)
    add_field_options(p, ExtractConfig)


def _add_backbone(p: argparse.ArgumentParser) -> None:
    add_field_options(p, RunConfig, ["backbone", "weights", "image_size", "token_dtype"])


def _add_protocol(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--protocol",
        default=None,
        choices=list(PROTOCOLS),
        help="which tokens and method: official (the authors' code, step for step) or studio (this "
        "project's); default: the preset's",
    )


def _add_sae(p: argparse.ArgumentParser) -> None:
    add_section_options(p, SAEConfig)
    p.add_argument("--seed", type=int, default=None, help=f"seed of both stages ({preset_defaults(SAEConfig, 'seed')})")
    add_field_options(p, RunConfig, ["method"])


def _add_guides(p: argparse.ArgumentParser) -> None:
    add_section_options(p, GuideConfig)


def _add_score(p: argparse.ArgumentParser) -> None:
    add_section_options(p, ScoreConfig)
    p.add_argument(
        "--aupro",
        default="mvtec",
        choices=["mvtec", "official"],
        help="the headline AUPRO: exact MVTec AD (default) or the official SPG code's 200-threshold "
        "one; both are always reported, as `aupro` and `aupro_official`",
    )


def _config_from(args: argparse.Namespace) -> RunConfig:
    """The run's config: dataclass defaults < the preset's settings < explicit options."""
    protocol = check_protocol(args.protocol or preset_of(args, args.backbone).protocol)
    d = preset_sections(args, args.backbone)
    if args.seed is not None:
        d = merged(d, {"sae": {"seed": args.seed}, "guides": {"seed": args.seed}})
    d.update(
        field_values(args, RunConfig),
        aux=args.aux,
        target=getattr(args, "target", None) or RunConfig.target,
        protocol=protocol,
    )
    cfg = RunConfig.from_dict(d)
    for note in config_warnings(cfg):
        print(f"warning: {note}", file=sys.stderr)
    return replace(cfg, score=resolve_context(cfg.score, cfg.protocol))  # config.json records the weight used


def _guides_for(run_cfg: RunConfig, args: argparse.Namespace) -> GuideConfig:
    """`spg train-guides`: the run's guide settings (or a new protocol's) < explicit options."""
    base = asdict(run_cfg.guides)
    if args.protocol is not None:
        base = {**asdict(GuideConfig()), **overrides(check_protocol(args.protocol)).get("guides", {})}
        base["seed"] = run_cfg.sae.seed
    return GuideConfig(**{**base, **section_overrides(args, [GuideConfig]).get("guides", {})})


def _io(args: argparse.Namespace) -> ExtractConfig:
    """The extraction and logging options, one object carried whole through the pipeline."""
    return config_from_args(args, ExtractConfig)


def _check_out_dir(path: str) -> None:
    """`--out` must name a directory (new or existing), not a file."""
    if Path(path).exists() and not Path(path).is_dir():
        raise SPGError(
            "--out names an existing file, not a directory",
            path=path,
            fix="pass a new or existing directory for the run",
        )


# -- commands --------------------------------------------------------------------------------


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run --out holds: the new run is built beside it and swapped in only when complete",
    )


@contextlib.contextmanager
def _build_folder(args: argparse.Namespace, cfg: RunConfig, done_file: str) -> Iterator[Path]:
    """The folder to build `args.out`'s run in, under its write lock (run_staging.py says which)."""
    if distributed.world_size() > 1 and args.overwrite:  # every rank writes the same folder
        raise SPGError("--overwrite is not available under torchrun", fix="write the run to a new --out")
    if not distributed.is_main():  # rank 0 alone decides and writes
        yield Path(args.out)
        return
    settings = effective_config(cfg).to_dict()
    check_backbone_image_size(cfg.backbone, cfg.image_size)  # before the folder or its lock exists
    with (
        run_lock(args.out, command_line()),
        build_folder(args.out, settings, overwrite=args.overwrite, done_file=done_file) as folder,
    ):
        yield folder


def cmd_run(args: argparse.Namespace) -> None:
    _check_out_dir(args.out)
    cfg = _config_from(args)
    print(f"protocol: {cfg.protocol}", file=sys.stderr)
    with _build_folder(args, cfg, METRICS_FILE) as folder:
        if distributed.world_size() > 1:
            metrics = _run_distributed(cfg, args)
            if metrics is None:
                return
        else:
            metrics = run_experiment(cfg, folder, _io(args), metric_options={"aupro_variant": args.aupro})
        write_reports(folder)
    print_metrics(metrics, title=f"{cfg.aux} -> {cfg.target} [{cfg.backbone}, {cfg.method}, {cfg.protocol}]")
    print(f"run directory: {args.out}")


def _run_distributed(cfg: RunConfig, args: argparse.Namespace) -> dict[str, Any] | None:
    """`spg run` under torchrun: both token stores and the SAE by every rank; guides, target maps and
    metrics (minutes, not hours) by rank 0 alone. The metrics on rank 0, None on the others."""
    io = _io(args)
    backbone = load_run_backbone(cfg, resolve_device(cfg.device), compile=io.compile)
    run = train_stages(cfg, args.out, io, stages=("sae",), backbone=backbone)
    extract(cfg.target, backbone, io, dtype=token_dtype(cfg.protocol, cfg.token_dtype))
    if not distributed.is_main():
        return None
    with distributed.main_only():
        train_stages(cfg, args.out, io, stages=("guides",), backbone=backbone)
        return evaluate_target(
            run, io, metric_options={"aupro_variant": args.aupro}, device=cfg.device, backbone=backbone
        )


def cmd_extract(args: argparse.Namespace) -> None:
    io = _io(args)
    protocol = check_protocol(args.protocol or preset_of(args, args.backbone).protocol)
    backbone = load_backbone(
        args.backbone, args.weights, device=args.device, protocol=protocol, image_size=args.image_size
    )
    if io.compile:
        backbone.enable_compile()
    store = extract(args.dataset, backbone, io, dtype=token_dtype(protocol, args.token_dtype))
    if distributed.is_main():
        print(f"{store.num_images} images x {store.num_patches} tokens x {store.dim} dims -> {store.root}")


def cmd_train_sae(args: argparse.Namespace) -> None:
    _check_out_dir(args.out)
    cfg = _config_from(args)
    with _build_folder(args, cfg, SAE_RECORD_FILE) as folder:
        train_stages(cfg, folder, _io(args), stages=("sae",))
    if distributed.is_main():
        print(f"SAE written to {Path(args.out) / 'sae.safetensors'}")


def cmd_train_guides(args: argparse.Namespace) -> None:
    cfg = RunDir(args.run).run_config()
    require_consistent(RunDir(args.run), ("sae",))
    cfg = replace(cfg, guides=_guides_for(cfg, args), device=args.device or cfg.device)
    run = train_stages(cfg, args.run, _io(args), stages=("guides",))
    print(f"guides written to {run.file('guides.safetensors')}")


def cmd_eval(args: argparse.Namespace) -> None:
    run = RunDir(args.run)
    score = run.run_config().score
    given = section_overrides(args, [ScoreConfig]).get("score", {})
    metrics = evaluate_target(
        run,
        _io(args),
        target=args.target,
        metric_options={"aupro_variant": args.aupro},
        score=with_overrides(score, given),
        device=args.device,
        save_maps_dir=args.save_maps,
    )
    write_reports(args.run)
    print_metrics(metrics, title=f"{metrics['settings']['aux']} -> {metrics['settings']['target']}")


def cmd_predict(args: argparse.Namespace) -> None:
    _check_out_dir(args.out)
    given = {k: v for k, v in field_values(args, ScoreConfig, CONTEXT_FIELDS).items() if v is not None}
    score = with_overrides(RunDir(args.run).run_config().score, given)
    rows, skipped = predict_files(
        args.run,
        args.images,
        args.out,
        device=args.device,
        skip_bad=args.skip_bad,
        max_pixels=args.max_pixels,
        score=score,
    )
    width = max((len(r["image"]) for r in rows), default=0)
    for r in rows:
        print(f"{r['image']:<{width}}  score {r['score']:.4f}  map {r['map']}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s); see {args.out}/skipped.json", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    # run and train-sae take the same options (train-sae records the guide and score settings for later stages)
    training_options = (
        add_preset_option,
        _add_protocol,
        _add_backbone,
        _add_sae,
        _add_guides,
        _add_score,
        _add_common,
        _add_overwrite,
    )
    parser = argparse.ArgumentParser(
        prog="spg", description="SPG Studio: zero-shot anomaly detection with sparse-projected guides"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole experiment: tokens, SAE, guides, target maps, metrics")
    p.add_argument("--aux", required=True, help=f"auxiliary dataset ({DATASET_HELP})")
    p.add_argument("--target", required=True, help=f"target dataset ({DATASET_HELP})")
    p.add_argument("--out", required=True, help="run directory to write")
    for add in training_options:
        add(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("extract", help="extract and store a dataset's patch tokens")
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    for add in (add_preset_option, _add_protocol, _add_backbone, _add_common):
        add(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train-sae", help="stage 1: train the TopK SAE on auxiliary tokens into a run directory")
    p.add_argument("--aux", required=True, help=DATASET_HELP)
    p.add_argument("--out", required=True, help="run directory to write")
    for add in training_options:
        add(p)
    p.set_defaults(func=cmd_train_sae)

    p = sub.add_parser("train-guides", help="stage 2: train guide coefficients for a run that has an SAE")
    p.add_argument("--run", required=True, help="run directory (from spg train-sae)")
    p.add_argument(
        "--protocol",
        default=None,
        choices=list(PROTOCOLS),
        help="take the guide settings of this protocol (default: the run's own guide settings)",
    )
    _add_guides(p)
    _add_common(p, device="the run's own")
    p.set_defaults(func=cmd_train_guides)

    p = sub.add_parser("eval", help="score a target dataset with a trained run and write metrics and reports")
    p.add_argument("--run", required=True)
    p.add_argument("--target", default=None, help=f"target dataset (default: the run's; {DATASET_HELP})")
    p.add_argument(
        "--save-maps",
        default=None,
        metavar="DIR",
        help="also write each image's final map (upsampled and smoothed, as the metrics see it) with its "
        "path, label and image score to DIR/NNNNNN.npz",
    )
    _add_score(p)
    _add_common(p, device="the run's own")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="anomaly map PNG and score for new images")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions", help="folder for map PNGs and scores.csv")
    add_field_options(p, RunConfig, ["device"])
    p.add_argument(
        "--skip-bad", action="store_true", help="skip unreadable or oversized images, listing them in OUT/skipped.json"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        help=f"refuse images with more pixels than this (default {MAX_IMAGE_PIXELS:,})",
    )
    add_field_options(p, ScoreConfig, CONTEXT_FIELDS, omitted="the run's own")
    p.set_defaults(func=cmd_predict)

    for register in _room_commands():
        register(sub)
    return parser


def _room_commands() -> list[Callable[[Any], None]]:
    """Commands whose code lives in its own room: sweeps, selection, atoms, reports, the dashboard launcher, imports."""
    return [
        sweep.register_cli,
        select.register_cli,
        atoms_cli.register_cli,
        report_html.register_cli,
        launch.register_cli,
        interop_cli.register_cli,
    ]


def interrupted_note(args: argparse.Namespace) -> str:
    """What a Ctrl-C left behind, truthfully: which of the run's artifacts exist (each written
    whole: temp file, then rename) and which do not."""
    folder = getattr(args, "run", None) or getattr(args, "out", None)
    if not folder or not Path(folder).is_dir() or args.command not in ("run", "train-sae", "train-guides", "eval"):
        return "interrupted: no file is half-written (each is written whole); re-run the command to finish"
    staging = staging_path(Path(folder))
    if getattr(args, "overwrite", False) and staging.is_dir():
        return (
            f"interrupted: the run in {folder} is untouched; the unfinished new run is in {staging}. "
            "Re-run the same command (with --overwrite) to resume it; a run of other settings removes it."
        )
    run = RunDir(folder)
    names = {
        CONFIG_FILE: "config",
        SAE_FILE: "SAE",
        GUIDES_FILE: "guides",
        PATCH_MAPS_FILE: "target maps",
        METRICS_FILE: "metrics",
    }
    present = [label for f, label in names.items() if run.exists(f)]
    missing = [label for f, label in names.items() if not run.exists(f)]
    try:
        stale = run.stale_artifacts()
        mixed = inconsistent_artifacts(run) if run.exists(CONFIG_FILE) else []
    except SPGError:
        stale, mixed = [], []
    text = (
        f"interrupted: {folder} holds {', '.join(present) or 'nothing yet'}"
        + (f"; not done: {', '.join(missing)}" if missing else "")
        + (f"; made from earlier inputs (stale): {', '.join(stale)}" if stale else "")
        + (f"; made with other settings than config.json (inconsistent): {', '.join(mixed)}" if mixed else "")
        + ". No file is half-written; re-run the command to finish (token extraction resumes)."
    )
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        if distributed.launched_by_torchrun():
            if args.command not in COLLECTIVE_COMMANDS:
                raise SPGError(
                    f"`spg {args.command}` runs in one process",
                    fix=f"launch it without torchrun (torchrun runs: {', '.join(COLLECTIVE_COMMANDS)})",
                )
            # NCCL needs CUDA tensors: a CPU job on a GPU machine talks over gloo.
            distributed.init_from_env("gloo" if getattr(args, "device", "auto") == "cpu" else None)
        func(args)
    except SPGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:  # a write refused outside atomic_path (e.g. DataLoader shared memory)
        refused = disk_error(exc)
        if refused is None:
            raise
        print(f"error: {refused}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted_note(args), file=sys.stderr)
        return 130
    finally:
        distributed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
