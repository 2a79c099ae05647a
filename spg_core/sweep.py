"""`spg sweep`: the paper's ablations in one command, re-using everything a setting allows.

Axes: backbone, SAE width M x TopK k, guide variant (ReLU + L1 over lambda,
TopK_K over K) and image-score aggregation (max, mean, log-sum-exp over T).
Token stores are shared per backbone, one SAE is trained per (backbone, M, k),
one guide pair per guide setting, and the aggregations only re-pool the same
maps, so pixel metrics are computed once per guide pair.

Writes SWEEP/sweep.csv (tidy: one row per setting x category x metric, the
category "mean" being the mean over categories) and plotly figures in the
spirit of the paper's Figures 2-4 and S1 (HTML always, PNG when a headless
browser is available for kaleido).
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.express as px
from tqdm.auto import tqdm

from .atomic import atomic_path, write_json, write_text
from .backbones import load_backbone
from .config import ExtractConfig, GuideConfig, RunConfig, SAEConfig
from .devices import resolve_device
from .errors import SPGError
from .inference import Scorer, dictionary_of, score_store, target_maps
from .metrics import METRIC_KEYS, image_metrics_by_category, mean_over_categories, pixel_metrics_by_category
from .options import add_field_options, add_preset_option, add_section_options, preset_sections
from .pipeline import extract, fit_dictionary, fit_guides
from .scoring import image_scores


@dataclass(frozen=True)
class Aggregation:
    kind: str  # max | mean | lse
    temperature: float = 0.0

    @property
    def label(self) -> str:
        return f"lse(T={self.temperature:g})" if self.kind == "lse" else self.kind


@dataclass(frozen=True)
class GuideSetting:
    variant: str  # relu_l1 | topk
    value: float  # lambda for relu_l1, K for topk

    @property
    def label(self) -> str:
        return f"relu_l1(lambda={self.value:g})" if self.variant == "relu_l1" else f"topk(K={int(self.value)})"


def parse_aggregations(text: str) -> list[Aggregation]:
    """'max,mean,lse:0.01,lse:0.1' -> aggregations."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        kind, _, t = item.partition(":")
        if kind not in ("max", "mean", "lse") or (kind == "lse" and not t):
            raise SPGError(
                f"bad aggregation {item!r}", fix="use max, mean or lse:T, e.g. --aggregations max,mean,lse:0.1"
            )
        out.append(Aggregation(kind, float(t) if t else 0.0))
    return out


def parse_guides(text: str) -> list[GuideSetting]:
    """'relu_l1:1e-3,topk:32' -> guide settings."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        variant, _, v = item.partition(":")
        if variant not in ("relu_l1", "topk") or not v:
            raise SPGError(f"bad guide setting {item!r}", fix="use relu_l1:LAMBDA or topk:K, e.g. relu_l1:1e-3,topk:64")
        out.append(GuideSetting(variant, float(v)))
    return out


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def setting_rows(setting: dict[str, Any], per_category: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Tidy rows (one per category x metric, plus the category "mean") of one setting, with
    metrics.evaluate's NaN rule: a mean skips the categories where a metric is undefined."""
    mean, _ = mean_over_categories(per_category)
    return [
        {**setting, "category": cat, "metric": key, "value": row.get(key, float("nan"))}
        for cat, row in [*sorted(per_category.items()), ("mean", mean)]
        for key in METRIC_KEYS
    ]


def _warn_once(notes: list[str], seen: set[str]) -> None:
    for note in notes:
        if note not in seen:
            seen.add(note)
            warnings.warn(note, stacklevel=3)


def run_sweep(
    *,
    aux: str,
    target: str,
    backbones: list[str],
    widths: list[int],
    ks: list[int],
    guides: list[GuideSetting],
    aggregations: list[Aggregation],
    base_sae: SAEConfig,
    base_guides: GuideConfig,
    out: str | Path,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every setting; returns the tidy frame also written to OUT/sweep.csv."""
    out = Path(out)
    dev = resolve_device(device)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    pairs = list(zip(*_grid(widths, ks)))
    bar = tqdm(total=len(backbones) * len(pairs) * len(guides), desc="sweep", unit="setting", disable=not progress)
    for backbone in backbones:
        bb = load_backbone(backbone, device=dev)
        io = ExtractConfig(cache_dir=cache_dir, quiet=not progress)
        aux_store, tgt_store = extract(aux, bb, io), extract(target, bb, io)
        masks = tgt_store.masks(range(tgt_store.num_images)).numpy().astype(np.uint8)
        labels = tgt_store.labels()
        cats = np.array([r["category"] for r in tgt_store.images])
        for width, k in pairs:
            t0 = time.perf_counter()
            sae, info = fit_dictionary(aux_store, replace(base_sae, width=width, k=k), "spg", dev, progress=False)
            sae_seconds = time.perf_counter() - t0
            for g in guides:
                gcfg = replace(
                    base_guides,
                    variant=g.variant,
                    **({"l1": g.value} if g.variant == "relu_l1" else {"topk": int(g.value)}),
                )
                pair, ginfo = fit_guides(
                    aux_store, dictionary_of(sae, bb.dim), gcfg, dev, progress=False, dead=sae.dead
                )
                scorer = Scorer(
                    pair.guide_vectors(dictionary_of(sae, bb.dim).to(dev)).detach(),
                    gcfg.tau,
                    tgt_store.grid,
                    tgt_store.image_size,
                )
                probs, _ = score_store(tgt_store, scorer, dev)
                maps = target_maps(probs, tgt_store.grid, tgt_store.image_size)
                setting = {
                    "backbone": backbone,
                    "width": width,
                    "k": k,
                    "guide": g.label,
                    "guide_variant": g.variant,
                    "guide_value": g.value,
                    "active_atoms": ginfo["active_normal"] + ginfo["active_anomaly"],
                    "sae_fvu": info.get("fvu"),
                    "sae_seconds": sae_seconds,
                }
                # pixel metrics once per guide pair: the aggregations only re-pool the same maps
                pixel, notes, _ = pixel_metrics_by_category(maps, masks, cats, device=dev)
                _warn_once(notes, seen)
                for agg in aggregations:
                    s = image_scores(maps.float(), agg.kind, agg.temperature).numpy()
                    image, notes = image_metrics_by_category(s, labels, cats)
                    _warn_once(notes, seen)
                    labelled = {**setting, "aggregation": agg.label, "agg_kind": agg.kind, "agg_T": agg.temperature}
                    rows += setting_rows(labelled, {c: {**image[c], **pixel[c]} for c in image})
                bar.update(1)
    bar.close()
    frame = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "sweep.csv", frame.to_csv(index=False))
    write_json(
        out / "sweep.json",
        {
            "aux": aux,
            "target": target,
            "backbones": backbones,
            "widths": widths,
            "ks": ks,
            "guides": [g.label for g in guides],
            "aggregations": [a.label for a in aggregations],
            "sae": base_sae.__dict__,
            "guide_base": base_guides.__dict__,
        },
    )
    write_figures(frame, out)
    return frame


def _grid(widths: list[int], ks: list[int]) -> tuple[list[int], list[int]]:
    """All (M, k) pairs with k < M."""
    pairs = [(m, k) for m in widths for k in ks if k < m]
    if not pairs:
        raise SPGError("no (width, k) pair with k < width", fix="choose --ks smaller than --widths")
    return [p[0] for p in pairs], [p[1] for p in pairs]


# -- figures ------------------------------------------------------------------------------------


def _mean_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["category"] == "mean"]


def sweep_figures(frame: pd.DataFrame) -> dict[str, Any]:
    """Plotly figures: M x k (Fig. 2), aggregation (Fig. 4), guide sparsity (Fig. S1), backbones (Fig. 3)."""
    mean = _mean_frame(frame)
    figs: dict[str, Any] = {}
    first_agg = mean["aggregation"].iloc[0]
    first_guide = mean["guide"].iloc[0]
    base = mean[(mean["aggregation"] == first_agg) & (mean["guide"] == first_guide)]
    if base["width"].nunique() > 1 or base["k"].nunique() > 1:
        figs["sae_width_k"] = px.line(
            base,
            x="width",
            y="value",
            color="k",
            facet_col="metric",
            markers=True,
            line_dash="backbone",
            log_x=True,
            title=f"SAE width M and sparsity k ({first_guide}, {first_agg})",
        )
    agg = mean[(mean["guide"] == first_guide) & (mean["metric"].isin(["image_auroc", "image_ap"]))]
    if agg["aggregation"].nunique() > 1:
        figs["aggregation"] = px.bar(
            agg,
            x="aggregation",
            y="value",
            color="metric",
            barmode="group",
            facet_col="backbone",
            title="Image-score aggregation",
        )
    guides = mean[mean["aggregation"] == first_agg]
    if guides["guide"].nunique() > 1:
        figs["guide_sparsity"] = px.scatter(
            guides,
            x="active_atoms",
            y="value",
            color="guide_variant",
            symbol="backbone",
            facet_col="metric",
            hover_data=["guide"],
            title="Guide sparsity: total active atoms vs metric",
        )
    if mean["backbone"].nunique() > 1:
        bb = base if not base.empty else mean
        figs["backbones"] = px.bar(bb, x="metric", y="value", color="backbone", barmode="group", title="Backbones")
    for fig in figs.values():
        fig.update_layout(template="plotly_white", height=420)
        fig.update_yaxes(range=[0, 1.02])
    return figs


def write_figures(frame: pd.DataFrame, out: Path) -> list[str]:
    """HTML for every figure; PNG too when kaleido finds a browser. Returns the files written."""
    written = []
    for name, fig in sweep_figures(frame).items():
        with atomic_path(out / f"{name}.html") as tmp:
            fig.write_html(str(tmp), include_plotlyjs="cdn")
        written.append(f"{name}.html")
        try:
            with atomic_path(out / f"{name}.png") as tmp:
                fig.write_image(str(tmp), format="png", width=1200, height=420)
            written.append(f"{name}.png")
        except Exception as exc:  # kaleido needs a Chrome/Chromium; HTML is the primary artifact
            print(f"note: {name}.png not written ({type(exc).__name__}); the HTML figure is there")
    return written


# -- CLI ----------------------------------------------------------------------------------------


def cmd_sweep(args: argparse.Namespace) -> None:
    backbones = [b for b in args.backbones.split(",") if b]
    base = preset_sections(args, backbones[0]) if backbones else {}
    frame = run_sweep(
        aux=args.aux,
        target=args.target,
        backbones=backbones,
        widths=_ints(args.widths),
        ks=_ints(args.ks),
        guides=parse_guides(args.guides),
        aggregations=parse_aggregations(args.aggregations),
        base_sae=SAEConfig(**base.get("sae", {})),
        base_guides=GuideConfig(**base.get("guides", {})),
        out=args.out,
        device=args.device,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    mean = _mean_frame(frame).pivot_table(
        index=["backbone", "width", "k", "guide", "aggregation"], columns="metric", values="value"
    )
    print((100 * mean[[k for k in METRIC_KEYS if k in mean.columns]]).round(1).to_string())
    print(f"sweep written to {args.out}")


def register_cli(sub: Any) -> None:
    p = sub.add_parser("sweep", help="ablations: SAE width/k, guide variant, aggregation, backbone")
    p.add_argument("--aux", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--out", required=True, help="sweep folder")
    p.add_argument("--backbones", default="dinov3-vitl16", help="comma-separated backbone names")
    p.add_argument("--widths", default="1024,2048,4096", help="SAE widths M")
    p.add_argument("--ks", default="16,32,64,128", help="TopK k values")
    p.add_argument("--guides", default="relu_l1:1e-3", help="relu_l1:LAMBDA and/or topk:K, comma-separated")
    p.add_argument(
        "--aggregations", default="max,mean,lse:0.01,lse:0.1,lse:1", help="max, mean, lse:T, comma-separated"
    )
    # The settings the grid leaves alone: the first backbone's preset, with these on top.
    add_preset_option(p, "the first backbone's")
    add_section_options(p, SAEConfig, ["epochs"])
    add_section_options(p, GuideConfig, ["epochs", "lr"])
    add_field_options(p, RunConfig, ["device"])
    add_field_options(p, ExtractConfig, ["cache_dir", "quiet"])
    p.set_defaults(func=cmd_sweep)
