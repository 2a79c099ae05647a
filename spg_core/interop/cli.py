"""`spg import-official`: an official SPG run's checkpoints -> an SPG Studio run directory."""

from __future__ import annotations

import argparse
from typing import Any

from .official import import_official


def cmd_import_official(args: argparse.Namespace) -> None:
    run = import_official(
        sae_checkpoint=args.sae_checkpoint,
        guide_checkpoint=args.guide_checkpoint,
        dead_mask=args.dead_mask,
        out=args.out,
        backbone=args.backbone,
        weights=args.weights,
        image_size=args.image_size,
        layer=args.layer,
        k=args.k,
        ema=not args.no_ema,
        guide_variant=args.guide_variant,
        guide_topk=args.guide_topk,
        aux=args.aux,
        target=args.target,
        device=args.device,
    )
    print(f"imported into {run.path}; next: `spg eval --run {run.path} --target DATASET`")


def register_cli(sub: Any) -> None:
    """Add `spg import-official` to the CLI (called by spg_core.cli)."""
    p = sub.add_parser("import-official", help="open checkpoints of the official SPG code (riips/SPG) as a run")
    p.add_argument("--sae-checkpoint", required=True, help="the SAE run's checkpoints/epoch_N.pth")
    p.add_argument("--guide-checkpoint", required=True, help="the guide run's checkpoints/epoch_N.pth")
    p.add_argument("--dead-mask", default=None, help="the SAE run's checkpoints/dead_atom_mask_layer_24.pt")
    p.add_argument("--backbone", required=True, help="the backbone the official run used, e.g. dinov3-vitl16")
    p.add_argument("--weights", default=None, help="its weights (hub id or directory; any size of the family)")
    p.add_argument("--image-size", type=int, default=None, help="S of the official run (default: the protocol's)")
    p.add_argument("--layer", type=int, default=None, help="block the tokens came from (default: the last)")
    p.add_argument("--k", type=int, default=32, help="TopK k of the official SAE (default 32)")
    p.add_argument("--no-ema", action="store_true", help="take the raw guides, not their EMA copy")
    p.add_argument(
        "--guide-variant",
        default="relu_l1",
        choices=["relu_l1", "topk"],
        help="the official run's sparsity_type (l1 -> relu_l1, topk -> topk)",
    )
    p.add_argument("--guide-topk", type=int, default=32, help="guide_topk of a topk run (default 32)")
    p.add_argument("--aux", default=None, help="auxiliary dataset (extracted, so `spg atoms` can index it)")
    p.add_argument("--target", default=None, help="target dataset recorded for `spg eval`")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_import_official)
