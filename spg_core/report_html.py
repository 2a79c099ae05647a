"""`spg report --run DIR`: one self-contained HTML file an engineer can send (no network, no scripts).

Sections (each an element with a fixed id, so tests and readers can find them):
`summary` (the experiment), `threshold` (the decision threshold chosen on the auxiliary set, the
target's outcomes at it, the oracle line labelled so), `metrics` (per-category table in %),
`errors` (the maps of the worst false positives and false negatives at that threshold) and
`atoms` (the top live anomaly-guide atoms with their top auxiliary patches). Every picture is
inlined as a base64 PNG.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .atomic import write_text
from .atoms import load_atoms, patch_crop, rank_atoms
from .atoms.visual import IN_MASK, OUT_MASK
from .consistency import require_consistent
from .errors import SPGError
from .guides import GuideSet
from .images import load_image
from .render import PROBABILITY_SCALE, display_map, draw_outline, fitted_scale, map_picture, sigmoid
from .report import METRIC_TITLES, METRICS
from .runs import RunDir
from .store import TokenStore
from .thresholds import best_f1_threshold, decision_counts, ensure_run_threshold

REPORT = "report.html"
CSS = """body{font-family:Helvetica,Arial,sans-serif;color:#141A33;margin:24px auto;max-width:1200px;padding:0 16px}
h1{color:#1E3C96}h2{border-bottom:2px solid #E3E7F2;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #D5DAE8;padding:4px 10px;text-align:right}
th{background:#F2F4FA}td:first-child,th:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{border:1px solid #D5DAE8;border-radius:8px;padding:8px;width:max-content}
.card img{display:block}.note{color:#4E5A6E;font-size:90%}figure{margin:0}figcaption{font-size:85%;max-width:460px}"""


def png_data_uri(image: Image.Image) -> str:
    """A PIL image as a data: URI (PNG, base64), so the HTML needs no other file."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image: Image.Image, alt: str) -> str:
    return (
        f'<img src="{png_data_uri(image)}" alt="{html.escape(alt)}" width="{image.size[0]}" height="{image.size[1]}">'
    )


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{100 * float(v):.1f}"


def metrics_table(metrics: dict[str, Any]) -> str:
    """Per-category metrics (%) with the mean last, as an HTML table."""
    head = "".join(f"<th>{html.escape(METRIC_TITLES[k])} (%)</th>" for k in METRICS)
    rows = [(cat, m) for cat, m in sorted(metrics.get("per_category", {}).items())] + [
        ("mean", metrics.get("mean", {}))
    ]
    body = "".join(
        f"<tr><td>{html.escape(cat)}</td>" + "".join(f"<td>{_pct(m.get(k))}</td>" for k in METRICS) + "</tr>"
        for cat, m in rows
    )
    return f"<table><tr><th>category</th>{head}</tr>{body}</table>"


def worst_errors(scores: np.ndarray, labels: np.ndarray, threshold: float, count: int = 4) -> dict[str, list[int]]:
    """Indices of the worst false positives (good, highest scores) and false negatives (anomalous,
    lowest scores) at `threshold`, worst first."""
    fp = np.flatnonzero((labels == 0) & (scores >= threshold))
    fn = np.flatnonzero((labels == 1) & (scores < threshold))
    return {
        "FP": fp[np.argsort(-scores[fp], kind="stable")][:count].tolist(),
        "FN": fn[np.argsort(scores[fn], kind="stable")][:count].tolist(),
    }


def _map_pair(
    run: RunDir,
    row: dict[str, Any],
    probs: np.ndarray,
    mask: np.ndarray,
    size: int,
    scale: Any,
    contour: float,
    sigma: float,
    side: int = 220,
) -> Image.Image:
    """The image with its ground truth beside its map (fitted scale, thresholded contour)."""
    image = load_image(row["image_path"]).resize((size, size), Image.BICUBIC)
    left = draw_outline(image, mask, colour=(60, 255, 120)) if mask.any() else image
    right = map_picture(image, display_map(probs, size, sigma), scale, alpha=0.6, contour_level=contour, truth=mask)
    pair = Image.new("RGB", (2 * side + 6, side), (255, 255, 255))
    pair.paste(left.resize((side, side), Image.BILINEAR), (0, 0))
    pair.paste(right.resize((side, side), Image.BILINEAR), (side + 6, 0))
    return pair


def atom_cards(run_dir: Path, count: int = 6, patches: int = 4) -> str:
    """The top live anomaly-guide atoms with crops of their top auxiliary patches (needs RUN/atoms)."""
    try:
        index, stats = load_atoms(run_dir)
    except SPGError as exc:
        reason, fix = html.escape(str(exc).splitlines()[0]), html.escape(exc.fix or "")
        return f'<p class="note">No atom section: {reason}. {fix}</p>'
    pair, _ = GuideSet.load(str(RunDir(run_dir).file("guides.safetensors")))
    tags = dict(zip(stats["atom"], stats["tag"])) if "atom" in stats.columns else dict(enumerate(stats["tag"]))
    live = [a for a in rank_atoms(pair)["anomaly"] if tags.get(a["atom"]) != "dead"][:count]
    records = TokenStore(RunDir(run_dir).read_config()["aux_store"]).images
    grid, size = tuple(index.meta["grid"]), int(index.meta["image_size"])
    cards = []
    for a in live:
        crops = []
        for e in index.entries(a["atom"])[:patches]:
            image = load_image(records[e["image"]]["image_path"]).resize((size, size), Image.BICUBIC)
            colour = IN_MASK if e["mask_fraction"] > 0 else OUT_MASK
            crops.append(
                _img(patch_crop(image, e["patch"], grid, size, 1, 96, outline=colour), f"atom {a['atom']} patch")
            )
        cards.append(
            f'<div class="card"><b>atom #{a["atom"]}</b> · {html.escape(str(tags.get(a["atom"], "")))} · '
            f"{100 * a['share']:.1f}% of the anomaly guide<br>{''.join(crops)}</div>"
        )
    if not cards:
        return '<p class="note">The anomaly guide has no live atom.</p>'
    return (
        '<p class="note">Top auxiliary patches of each atom; boxed red where the patch overlaps a '
        'defect mask.</p><div class="cards">' + "".join(cards) + "</div>"
    )


def build_report(run_dir: str | Path, *, count: int = 4) -> str:
    """The report of one run as an HTML string (see the module docstring for its sections)."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    require_consistent(run)
    metrics = run.read_metrics()
    probs, _scores_t, meta, rows = run.read_target_rows()
    scores = np.array([r["score"] for r in rows], dtype=np.float64)
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    try:
        record: dict[str, Any] | None = ensure_run_threshold(run.path)
    except SPGError:
        record = None
    oracle = best_f1_threshold(scores, labels)
    threshold = record["image"]["threshold"] if record else oracle
    counts = decision_counts(scores, labels, threshold)
    scale = fitted_scale(record["pixel_scale"]) if record else PROBABILITY_SCALE
    contour = sigmoid(record["pixel_scale"]["vmax"]) if record else 0.5
    sigma = float(metrics.get("settings", {}).get("smoothing_sigma", cfg.get("score", {}).get("smoothing_sigma", 0.0)))

    name = html.escape(run.path.name)
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>SPG run report: {name}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>SPG run report: {name}</h1>",
        f'<section id="summary"><p>{html.escape(str(cfg.get("aux")))} &rarr; {html.escape(str(cfg.get("target")))} · '
        f"backbone {html.escape(str(cfg.get('backbone')))} · method {html.escape(str(cfg.get('method')))} · "
        f"{len(rows)} target images ({int(labels.sum())} anomalous)</p>"
        f'<p class="note">Written {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC by `spg report`.</p></section>',
    ]
    if record:
        rule = record["image"]["rule"]
        source = (
            f"chosen on the auxiliary set ({html.escape(str(record['aux']))}, {record['aux_images']} images) "
            f"by rule <b>{html.escape(rule)}</b>"
        )
    else:
        source = "<b>oracle</b> (the run has no auxiliary store to choose one on, so the target's own best-F1 is used)"
    parts.append(
        '<section id="threshold"><h2>Decision threshold</h2>'
        f"<p>Image score threshold <b>{threshold:.4g}</b>, {source}. "
        f"On the target at this threshold: TP {counts['tp']}, FP {counts['fp']}, FN {counts['fn']}, TN {counts['tn']} "
        f"(F1 {counts['f1']:.2f}, false-positive rate {100 * counts['fpr']:.0f}%).</p>"
        f'<p class="note">Oracle line, for reference only: the target\'s own best-F1 threshold is {oracle:.4g} '
        f"(chosen with the target labels, so it flatters).</p></section>"
    )
    parts.append(f'<section id="metrics"><h2>Metrics</h2>{metrics_table(metrics)}</section>')

    store = TokenStore(cfg["target_store"]) if cfg.get("target_store") and Path(cfg["target_store"]).is_dir() else None
    size = int(meta.get("image_size") or (store.image_size if store else 224))
    errors = worst_errors(scores, labels, threshold, count)
    figures = []
    for kind, title in (
        ("FP", "Worst false positives (good images scored highest)"),
        ("FN", "Worst false negatives (anomalous images scored lowest)"),
    ):
        cards = []
        for i in errors[kind]:
            mask = store.masks([i])[0].numpy() > 0.5 if store else np.zeros((size, size), bool)
            pair = _map_pair(run, rows[i], probs[i].float().numpy(), mask, size, scale, contour, sigma)
            cards.append(
                f'<figure class="card">{_img(pair, rows[i]["image_path"])}<figcaption>'
                f"{html.escape(Path(rows[i]['image_path']).parent.name)}/{html.escape(Path(rows[i]['image_path']).name)}"
                f" · {html.escape(str(rows[i]['category']))} · score {scores[i]:.4g}</figcaption></figure>"
            )
        body = "".join(cards) or '<p class="note">None at this threshold.</p>'
        figures.append(f"<h3>{title}</h3><div class='cards'>{body}</div>")
    parts.append(
        f'<section id="errors"><h2>Errors at the threshold</h2><p class="note">Left: the image, ground truth '
        f"in green. Right: {html.escape(scale.legend)}; white outline where the map reaches p {contour:.2g}."
        f"</p>{''.join(figures)}</section>"
    )
    parts.append(f'<section id="atoms"><h2>Top anomaly atoms</h2>{atom_cards(run.path)}</section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report (default RUN/report.html) atomically; returns its path."""
    target = Path(out) if out is not None else Path(run_dir) / REPORT
    text = build_report(run_dir)
    write_text(target, text)
    return target


def cmd_report(args: argparse.Namespace) -> None:
    path = write_report(args.run, args.out)
    print(f"report written to {path}")


def register_cli(subparsers: Any) -> None:
    """`spg report --run DIR [--out FILE]`."""
    p = subparsers.add_parser("report", help="write a self-contained HTML report of a run (viewable offline)")
    p.add_argument("--run", required=True, help="the run directory")
    p.add_argument("--out", default=None, help="where to write it (default RUN/report.html)")
    p.set_defaults(func=cmd_report)
