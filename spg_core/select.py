"""`spg select`: choose hyper-parameters on the auxiliary set alone, never on the target.

Leave-categories-out validation: for every fold, the SAE and the guides are fitted on
the auxiliary categories kept in and the held-out ones are scored as an unseen target
would be; the folds rotate so every category is held out once. With a single auxiliary
category, the folds hold out defect kinds instead (each fold: some defect kinds and a
matching share of the good images). The target set is never opened: `--target` is only
written into the suggested `spg run` command.

Every setting of the grid (backbone / token layout, M, k, lambda, guide epochs) gets the
mean over folds of each metric; the chosen one has the highest mean of image AUROC and
pixel AUROC (the two headline figures; ties go to the earlier, smaller setting). Writes
OUT/select.csv (one row per setting and fold, plus the fold means) and OUT/select.json
(grid, folds, rows, the choice and the rule). A grid can take hours on a CPU, so every
finished (setting, fold) row is kept in OUT/select.rows.json as it lands: run the same
command again after an interruption and only the missing rows are computed.

With `--context-grid FORM:WEIGHT,...` each fold's held-out images are also scored by SPG + the
atom-space context (context.py) for every entry, and the chosen setting's best fusion (plain SPG
included) is recorded under "context" in select.json (context_select.py), for `spg run --context
--context-select OUT/select.json`.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import read_json, write_json, write_text
from .backbones import load_backbone
from .config import ExtractConfig, GuideConfig, RunConfig, SAEConfig
from .context_select import choose_context, parse_context_grid, score_context
from .devices import resolve_device
from .errors import SPGError
from .inference import Scorer, dictionary_of, score_store, target_maps
from .metrics import evaluate
from .options import add_field_options, add_preset_option, add_section_options, preset_sections
from .pipeline import extract, fit_dictionary, fit_guides

CRITERION = ("image_auroc", "pixel_auroc")
ROWS_FILE = "select.rows.json"
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    backbone: str
    width: int
    k: int
    l1: float
    guide_epochs: int


@dataclass(frozen=True)
class Fold:
    """Which auxiliary images train and which are held out (indices into the aux store)."""

    name: str
    train: tuple[int, ...]
    held_out: tuple[int, ...]


class StoreView:
    """A subset of a TokenStore's images, with the interface the stage functions read."""

    def __init__(self, store: Any, indices: tuple[int, ...]):
        self.store, self.indices = store, list(indices)
        self.grid, self.dim, self.num_patches = store.grid, store.dim, store.num_patches
        self.image_size, self.root, self.has_cls = store.image_size, store.root, store.has_cls
        self.images = [store.images[i] for i in self.indices]

    @property
    def num_images(self) -> int:
        return len(self.indices)

    def tokens(self, idx: Any) -> torch.Tensor:
        return self.store.tokens([self.indices[i] for i in idx])

    def masks(self, idx: Any) -> torch.Tensor:
        return self.store.masks([self.indices[i] for i in idx])

    def labels(self) -> np.ndarray:
        return self.store.labels()[self.indices]

    def all_tokens(self, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16) -> torch.Tensor:
        return self.tokens(range(self.num_images)).to(device=device, dtype=dtype).reshape(-1, self.dim)

    def cls(self, idx: Any) -> torch.Tensor | None:
        return self.store.cls([self.indices[i] for i in idx])

    def all_cls(self, dtype: torch.dtype = torch.float16) -> torch.Tensor | None:
        cls = self.cls(range(self.num_images))
        return None if cls is None else cls.to(dtype)


def category_folds(images: list[dict[str, Any]], max_folds: int = 4) -> list[Fold]:
    """Leave-categories-out folds over store records (`category`, `label`, `defect`).

    Several categories: category c goes to fold c mod `max_folds`. One category: defect
    kinds are dealt to folds in turn, and the good images by index, so each fold holds out
    some defect kinds and a share of the good images."""
    cats = sorted({r["category"] for r in images})
    if len(cats) > 1:
        groups = [cats[i::max_folds] for i in range(min(max_folds, len(cats)))]
        key = [next(f for f, g in enumerate(groups) if r["category"] in g) for r in images]
        names = ["+".join(g) for g in groups]
    else:
        kinds = sorted({r.get("defect", "") for r in images if int(r["label"]) == 1})
        if len(kinds) < 2:
            raise SPGError(
                "one auxiliary category with fewer than two defect kinds: nothing to hold out",
                fix="use an auxiliary set with two or more categories or defect kinds",
            )
        n = min(max_folds, len(kinds))
        groups = [kinds[i::n] for i in range(n)]
        good = [i for i, r in enumerate(images) if int(r["label"]) == 0]
        key = [
            next(f for f, g in enumerate(groups) if r.get("defect", "") in g)
            if int(r["label"]) == 1
            else good.index(i) % n
            for i, r in enumerate(images)
        ]
        names = [f"{cats[0]}:{'+'.join(g)}" for g in groups]
    folds = []
    for f, name in enumerate(names):
        held = tuple(i for i, k in enumerate(key) if k == f)
        folds.append(Fold(name, tuple(i for i, k in enumerate(key) if k != f), held))
    return folds


def score_fold(
    aux_view: StoreView,
    held_view: StoreView,
    setting: Setting,
    sae_cfg: SAEConfig,
    guide_cfg: GuideConfig,
    device: torch.device,
    dictionary_cache: dict,
    context_grid: tuple[tuple[str, float], ...] = (),
) -> dict[str, Any]:
    """Fit the SAE (cached per backbone, M, k and fold) and guides on `aux_view`; metrics on `held_view`,
    and under "context" those of SPG + context for every (form, weight) of `context_grid`."""
    family = (setting.backbone, setting.width, setting.k)
    if dictionary_cache.get("family") != family:  # settings come dictionary by dictionary: keep one per fold
        dictionary_cache.clear()
        dictionary_cache["family"] = family
    key = tuple(aux_view.indices)
    if key not in dictionary_cache:
        sae, _ = fit_dictionary(
            aux_view, replace(sae_cfg, width=setting.width, k=setting.k), "spg", device, progress=False
        )
        dictionary_cache[key] = (dictionary_of(sae, aux_view.dim), None if sae is None else sae.dead, sae)
    dictionary, dead, sae = dictionary_cache[key]
    pair, _ = fit_guides(
        aux_view,
        dictionary,
        replace(guide_cfg, l1=setting.l1, epochs=setting.guide_epochs),
        device,
        progress=False,
        dead=dead,
    )
    guides = pair.guide_vectors(dictionary.to(device)).detach()
    scorer = Scorer(guides, guide_cfg.tau, held_view.grid, held_view.image_size)
    probs, scores = score_store(held_view, scorer, device)
    maps = target_maps(probs, held_view.grid, held_view.image_size)
    masks = held_view.masks(range(held_view.num_images)).to(torch.uint8)
    out = evaluate(
        scores.numpy(), held_view.labels(), maps.numpy(), masks.numpy(), [r["category"] for r in held_view.images]
    )
    metrics: dict[str, Any] = {m: float(out["mean"].get(m, float("nan"))) for m in METRICS}
    if context_grid and sae is not None:
        metrics["context"] = score_context(held_view, sae, guides.cpu(), guide_cfg.tau, context_grid)
    return metrics


def run_select(
    aux: str,
    grid: list[Setting],
    out: str | Path,
    *,
    sae_cfg: SAEConfig,
    guide_cfg: GuideConfig,
    target: str | None = None,
    max_folds: int = 4,
    image_size: int | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    progress: bool = True,
    context_grid: tuple[tuple[str, float], ...] = (),
) -> dict[str, Any]:
    """Cross-validate every setting of `grid` on `aux` alone; write select.csv / select.json into `out`.
    `image_size`: S of every backbone (default: each one's own).
    With a `context_grid` of (form, weight), the context's fusion is chosen too (`choose_context`).

    The grid is visited backbone by backbone (one token extraction each) and, within one,
    setting by setting: the SAE of a fold is re-used by every setting that shares its
    backbone, M and k, so order the grid with those outermost (`parse_grid` does)."""
    if not grid:
        raise SPGError("the selection grid is empty", fix="give at least one value for every grid option")
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"aux": aux, "max_folds": max_folds, "sae": asdict(sae_cfg), "guides": asdict(guide_cfg)}
    if image_size is not None:  # only when given, so earlier select folders keep their identity
        identity["image_size"] = image_size
    if context_grid:
        identity["context_grid"] = [list(c) for c in context_grid]
    rows = finished_rows(out / ROWS_FILE, identity)
    done = {(row_setting(r), r["fold"]) for r in rows}
    folds: list[Fold] = []
    t0 = time.perf_counter()
    for backbone_name, settings in itertools.groupby(grid, key=lambda s: s.backbone):
        # a finished store is only re-read from the cache
        store = extract(
            aux,
            load_backbone(backbone_name, device=dev, image_size=image_size),
            ExtractConfig(cache_dir=cache_dir, quiet=not progress),
        )
        folds = category_folds(store.images, max_folds)
        cache: dict = {}
        for setting in settings:
            for fold in folds:
                if (setting, fold.name) in done:
                    continue
                metrics = score_fold(
                    StoreView(store, fold.train),
                    StoreView(store, fold.held_out),
                    setting,
                    sae_cfg,
                    guide_cfg,
                    dev,
                    cache,
                    context_grid,
                )
                rows.append({**asdict(setting), "fold": fold.name, **metrics})
                write_json(out / ROWS_FILE, {**identity, "rows": rows})
                if progress:
                    print(
                        f"[select {time.perf_counter() - t0:6.0f} s] {setting} held out {fold.name}: "
                        + ", ".join(f"{m} {metrics[m]:.3f}" for m in METRICS),  # not the context rows
                        flush=True,
                    )
    summary = summarise(rows, grid)
    chosen = max(summary, key=lambda r: (r["criterion"], -grid.index(row_setting(r))))
    result = {
        "aux": aux,
        "target_opened": False,
        "rule": rule_text(max_folds),
        "criterion": list(CRITERION),
        "sae": asdict(sae_cfg),
        "guides": asdict(guide_cfg),
        "folds": [f.name for f in folds],
        "rows": rows,
        "summary": summary,
        "chosen": chosen,
        "seconds": time.perf_counter() - t0,
        "command": suggested_command(aux, target, chosen, sae_cfg, guide_cfg)
        + (f" --image-size {image_size}" if image_size is not None else ""),
    }
    if context_grid:
        mine = [r for r in rows if row_setting(r) == row_setting(chosen)]
        result["context"] = choose_context(mine, context_grid, CRITERION)
        result["command"] += f" --context --context-select {out / 'select.json'}"
    write_text(out / "select.csv", table_csv(rows + [{**r, "fold": "mean"} for r in summary]))
    write_json(out / "select.json", result)
    return result


def row_setting(row: dict[str, Any]) -> Setting:
    return Setting(**{f: row[f] for f in Setting.__dataclass_fields__})


def finished_rows(path: Path, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows an earlier, interrupted `spg select` into the same folder finished, if it ran
    with the same auxiliary set, folds and fixed settings; otherwise none (they are recomputed)."""
    if not path.is_file():
        return []
    saved = read_json(path, what="select rows file")
    same = all(json_equal(saved.get(k), v) for k, v in identity.items())
    return list(saved.get("rows", [])) if same else []


def json_equal(a: Any, b: Any) -> bool:
    """Equality after a JSON round trip (tuples come back as lists)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def summarise(rows: list[dict[str, Any]], grid: list[Setting]) -> list[dict[str, Any]]:
    """Fold means per setting (NaN folds skipped), with the selection criterion."""
    out = []
    for s in grid:
        mine = [r for r in rows if row_setting(r) == s]
        means = {m: float(np.nanmean([r[m] for r in mine])) for m in METRICS}
        means.update({f"{m}_std": float(np.nanstd([r[m] for r in mine])) for m in CRITERION})
        out.append({**asdict(s), **means, "criterion": float(np.mean([means[m] for m in CRITERION]))})
    return out


def rule_text(max_folds: int) -> str:
    return (
        f"leave-categories-out on the auxiliary set (at most {max_folds} folds; one category: defect "
        f"kinds held out); highest fold-mean of {' and '.join(CRITERION)} averaged; target never opened"
    )


def suggested_command(
    aux: str, target: str | None, chosen: dict[str, Any], sae_cfg: SAEConfig, guide_cfg: GuideConfig
) -> str:
    return (
        f"spg run --aux {aux} --target {target or 'TARGET'} --out RUN --backbone {chosen['backbone']} "
        f"--width {chosen['width']} --k {chosen['k']} --sae-epochs {sae_cfg.epochs} --l1 {chosen['l1']} "
        f"--guide-epochs {chosen['guide_epochs']} --guide-lr {guide_cfg.lr}"
    )


def table_csv(rows: list[dict[str, Any]]) -> str:
    fields = [*Setting.__dataclass_fields__, "fold", *METRICS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) and k in METRICS else v) for k, v in r.items()})
    return buf.getvalue()


def parse_grid(args: argparse.Namespace) -> list[Setting]:
    """Comma-separated option values -> the product grid, ordered backbone-major."""

    def values(text: str, cast: Any) -> list[Any]:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise SPGError(f"cannot read the grid values {text!r}", fix="give comma-separated numbers") from None

    return [
        Setting(*p)
        for p in itertools.product(
            values(args.backbones, str.strip),
            values(args.widths, int),
            values(args.ks, int),
            values(args.l1s, float),
            values(args.guide_epochs, int),
        )
    ]


def cmd_select(args: argparse.Namespace) -> None:
    grid = parse_grid(args)
    # --guide-epochs is a grid here, not the guides section's single value: keep it out of the preset.
    fixed = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "guide_epochs"})
    base = preset_sections(fixed, grid[0].backbone) if grid else {}
    seeds = {} if args.seed is None else {"seed": args.seed}
    sae_cfg = SAEConfig(**{**base.get("sae", {}), **seeds})
    guide_cfg = GuideConfig(**{**base.get("guides", {}), **seeds})
    result = run_select(
        args.aux,
        grid,
        args.out,
        sae_cfg=sae_cfg,
        guide_cfg=guide_cfg,
        target=args.target,
        max_folds=args.folds,
        image_size=args.image_size,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
        context_grid=parse_context_grid(args.context_grid),
    )
    c = result["chosen"]
    print(
        f"chosen on {args.aux} alone ({len(result['folds'])} folds): {c['backbone']} M {c['width']} k {c['k']} "
        f"lambda {c['l1']} guide epochs {c['guide_epochs']}: image AUROC {c['image_auroc']:.3f}, "
        f"pixel AUROC {c['pixel_auroc']:.3f}"
    )
    if "context" in result:
        cc = result["context"]["chosen"]
        print(
            f"context: {cc['form']} weight {cc['weight']} (criterion {cc['criterion']:.3f}"
            + ("" if result["context"]["helps"] else "; no weight beat plain SPG on the held-out folds")
            + ")"
        )
    print(f"table: {Path(args.out) / 'select.csv'}\nnext:  {result['command']}")


def register_cli(sub: Any) -> None:
    """Add `spg select` to the CLI (called by spg_core.cli)."""
    p = sub.add_parser(
        "select",
        help="choose hyper-parameters by leave-categories-out validation on the "
        "auxiliary set alone (the target is never opened)",
    )
    p.add_argument("--aux", required=True, help="auxiliary dataset (the only one read)")
    p.add_argument("--target", default=None, help="only written into the suggested `spg run` command; never opened")
    p.add_argument("--out", required=True, help="folder for select.csv and select.json")
    p.add_argument("--backbones", default="effnet-lite0", help="comma-separated backbone names (effnet: NAME@LAYOUT)")
    p.add_argument("--widths", default="512,1024", help="SAE widths M")
    p.add_argument("--ks", default="16,32", help="TopK k values")
    p.add_argument("--l1s", default=str(GuideConfig.l1), help="guide L1 lambdas")
    p.add_argument("--guide-epochs", default="30,60", help="guide epochs")
    p.add_argument("--seed", type=int, default=None, help="seed of both stages (default: the preset's)")
    p.add_argument("--folds", type=int, default=4, help="at most this many folds")
    # The settings the grid leaves alone: the first backbone's preset, with these on top.
    add_preset_option(p, "the first backbone's")
    add_section_options(p, SAEConfig, ["epochs"])
    add_section_options(p, GuideConfig, ["lr"])
    add_field_options(p, RunConfig, ["device", "image_size"])
    add_field_options(p, ExtractConfig, ["cache_dir", "quiet"])
    p.add_argument(
        "--context-grid",
        default="",
        help="also choose the atom-space context's fusion: comma-separated FORM:WEIGHT (e.g. "
        "logit:1,logit:4,mix:0.5); plain SPG (weight 0) is always a candidate",
    )
    p.set_defaults(func=cmd_select)
