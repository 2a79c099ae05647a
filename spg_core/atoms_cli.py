"""`spg atoms`: build a run's atom index and statistics, and draw the atom gallery.

spg atoms --run DIR                 index + stats into RUN/atoms/ (rebuilt every time)
spg atoms --run DIR --gallery 8     RUN/atoms/gallery.png of the top 8 anomaly-guide atoms
                                    (builds the index first only when it is missing or stale)
"""

from __future__ import annotations

import argparse
from collections import Counter
from typing import Any

import pandas as pd

from . import distributed
from .atoms import build_atoms, load_atoms, rank_atoms, write_gallery
from .atoms.flags import FLAG_RULE
from .atoms.stats import TAG_RULE
from .config import ExtractConfig, RunConfig
from .errors import SPGError
from .guides import GuideSet
from .options import add_field_options
from .runs import GUIDES_FILE as GUIDES
from .runs import RunDir


def _summary(run: str, limit: int = 10) -> None:
    index, stats = load_atoms(run)
    pair, _ = GuideSet.load(str(RunDir(run).file(GUIDES)), expect_width=index.width)
    ranked = rank_atoms(pair)
    print(
        f"atom index: {index.width} atoms x top {index.top_p} patches over "
        f"{index.counts.num_tokens:,} auxiliary tokens ({index.meta.get('seconds', 0):.1f} s on "
        f"{index.meta.get('device', '?')})"
    )
    print(f"tags (all atoms): {dict(Counter(stats['tag']))}")
    for guide in ("anomaly", "normal"):
        tags = Counter(stats["tag"].iloc[a["atom"]] for a in ranked[guide])
        print(f"{guide} guide: {len(ranked[guide])} active atoms; tags {dict(tags)}")
    print(f"\ntop {limit} anomaly-guide atoms:")
    print(
        f"  {'atom':>6} {'coef':>9} {'share':>6} {'tag':<15} {'in-mask':>7} {'top category':<18} {'flags':<28} defects"
    )
    for a in ranked["anomaly"][:limit]:
        row = stats.iloc[a["atom"]]
        sel = "n/a" if pd.isna(row["selectivity"]) else f"{row['selectivity']:.2f}"
        cat = f"{row['top_category']} {row['top_category_share']:.0%}" if isinstance(row["top_category"], str) else "-"
        defects = ", ".join(f"{k} {v}" for k, v in (row["top_defects"] or {}).items()) or "-"
        flags = (row.get("flags") or "-") + (f" ({row['labels']})" if row.get("labels") else "")
        print(
            f"  {a['atom']:>6} {a['coef']:>9.4g} {a['share']:>6.1%} {row['tag']:<15} {sel:>7} {cat:<18} "
            f"{flags:<28} {defects}"
        )
    flagged = [int(a) for a, f in zip(stats["atom"], stats.get("flags", [""] * len(stats))) if f]
    print(f"\nflagged as likely artefacts: {len(flagged)} atoms; rule: {FLAG_RULE}")
    print(f"\ntag rule: {TAG_RULE}")


def cmd_atoms(args: argparse.Namespace) -> None:
    must_build = args.gallery is None or args.rebuild
    if not must_build:
        try:
            load_atoms(args.run)
        except SPGError:
            must_build = True
    if must_build:
        build_atoms(args.run, progress=not args.quiet, top_p=args.top_p, device=args.device)
    if not distributed.is_main():  # under torchrun only the index pass is shared
        return
    with distributed.main_only():
        _summary(args.run)
        if args.gallery is not None:
            path = write_gallery(args.run, args.gallery, per_atom=args.per_atom, device=args.device)
            print(f"gallery: {path}")


def register_cli(subparsers: Any) -> None:
    """Add the `atoms` subcommand to `spg`'s subparsers (called by spg_core.cli)."""
    p = subparsers.add_parser("atoms", help="interpret a run: atom index, per-atom statistics and tags, gallery")
    # --run-dir: the spelling torchrun passes on (its parser takes --run for its own --run-path)
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory (from spg run)")
    p.add_argument("--top-p", type=int, default=16, help="auxiliary patches kept per atom (default 16)")
    p.add_argument(
        "--gallery",
        type=int,
        default=None,
        metavar="N",
        help="write RUN/atoms/gallery.png of the top N anomaly-guide atoms",
    )
    p.add_argument("--per-atom", type=int, default=9, help="top patches shown per atom in the gallery (default 9)")
    p.add_argument("--rebuild", action="store_true", help="with --gallery: rebuild the index even if it is fresh")
    add_field_options(p, RunConfig, ["device"])
    add_field_options(p, ExtractConfig, ["quiet"])
    p.set_defaults(func=cmd_atoms)
