"""View models for SPG Studio: the non-UI logic the dashboard pages need.

Everything here is plain Python over run artifacts (no Streamlit), so it is
tested directly and the pages stay thin: path validation inside the runs root,
a run's health check, metric tables as DataFrames, threshold outcomes, and
upload validation.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .atoms.build import INDEX as ATOM_INDEX
from .errors import SPGError
from .report import METRIC_TITLES, METRICS, paper_row
from .images import MAX_IMAGE_PIXELS
from .runs import (CONFIG_FILE as CONFIG, GUIDES_FILE as GUIDES, METRICS_FILE, PATCH_MAPS_FILE as PATCH_MAPS,
                   SAE_FILE as SAE, SCORES_FILE as SCORES, RunDir, list_runs)

RUNS_ENV = "SPG_RUNS_ROOT"

# Upload limits: a 25 MB file or a 40-megapixel image is far beyond any inspection image the
# backbones see (they resize to <= 518 px), and decoding more would let one upload stall the server.
UPLOAD_TYPES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_PIXELS = MAX_IMAGE_PIXELS   # the engine's one pixel limit (images.py)

# What each artifact is needed for, in the words a page shows.
ARTIFACTS: dict[str, str] = {
    CONFIG: "run configuration",
    SAE: "SAE dictionary",
    GUIDES: "guides",
    PATCH_MAPS: "target anomaly maps",
    SCORES: "target image scores",
    METRICS_FILE: "metrics",
    ATOM_INDEX: "atom index",
}


# -- runs root and run paths -----------------------------------------------------------------

def runs_root(default: str | Path = "runs") -> Path:
    """The dashboard's runs root: `$SPG_RUNS_ROOT`, else `default`, resolved."""
    return Path(os.environ.get(RUNS_ENV) or default).expanduser().resolve()


def run_names(root: str | Path) -> list[str]:
    """Run directories under `root` as root-relative POSIX names, newest first."""
    root = Path(root).resolve()
    names = []
    for p in list_runs(root):
        try:
            names.append(p.resolve().relative_to(root).as_posix())
        except ValueError:          # a symlink pointing outside the root: not reachable
            continue
    return names


def resolve_run(root: str | Path, name: str) -> Path:
    """The run directory `name` under `root`, refusing anything that escapes the root."""
    root = Path(root).resolve()
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise SPGError(f"run name {name!r} is not a path inside the runs root", path=str(root),
                       fix="pick a run from the list")
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise SPGError(f"run {name!r} lies outside the runs root", path=str(root), fix="pick a run from the list")
    if not path.is_dir():
        raise SPGError(f"run {name!r} no longer exists", path=str(path), fix="pick another run or create it again")
    return path


def run_signature(path: str | Path) -> tuple[float, ...]:
    """Modification times of a run's artifacts: a cache key that changes when a run is rewritten."""
    path = Path(path)
    return tuple((path / f).stat().st_mtime if (path / f).is_file() else -1.0 for f in ARTIFACTS)


# -- run health ---------------------------------------------------------------------------------

@dataclass
class RunHealth:
    """Which artifacts a run has; `problems` name what is missing or unreadable."""

    path: Path
    present: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # complete but questionable, e.g. saturated guides
    stale: list[str] = field(default_factory=list)      # artifacts whose producer changed since

    def has(self, *files: str) -> bool:
        return all(self.present.get(f, False) for f in files)

    def missing(self, *files: str) -> list[str]:
        return [ARTIFACTS.get(f, f) for f in files if not self.present.get(f, False)]

    @property
    def status(self) -> str:
        if not self.has(CONFIG):
            return "damaged"
        if not self.has(SAE, GUIDES) and not self.has(GUIDES):
            return "training"
        if not self.has(PATCH_MAPS, SCORES, METRICS_FILE):
            return "not evaluated"
        if self.stale:      # maps or metrics from earlier guides (see RunDir.stale_artifacts)
            return "stale"
        return "complete" if self.has(ATOM_INDEX) else "no atoms"


def check_run(path: str | Path) -> RunHealth:
    """Cheap health check: which artifacts exist and whether the JSON ones parse."""
    from .atomic import read_json

    health = RunHealth(Path(path))
    for name in ARTIFACTS:
        health.present[name] = (health.path / name).is_file()
    for name in (CONFIG, METRICS_FILE):
        if health.present[name]:
            try:
                read_json(health.path / name, what=ARTIFACTS[name])
            except SPGError as exc:
                health.present[name] = False
                health.problems.append(str(exc).splitlines()[0] + f" ({name})")
    for name in ARTIFACTS:
        if not health.present[name] and not any(name in p for p in health.problems):
            health.problems.append(f"{ARTIFACTS[name]} missing ({name})")
    health.notes += guide_notes(health.path / "guides.json")
    try:
        health.stale = RunDir(health.path).stale_artifacts()
    except SPGError:
        pass            # unreadable files are reported as problems above
    if health.stale:
        health.notes.append(f"stale: {', '.join(health.stale)} were made from earlier inputs; "
                            "re-run `spg eval --run DIR`")
    return health


def guide_notes(path: Path) -> list[str]:
    """Warnings about a guides.json's auxiliary fit (empty when fine, absent or unreadable)."""
    from .atomic import read_json
    from .guides import saturation_note

    try:
        record = read_json(path, what="guide training record") if path.is_file() else {}
    except SPGError:
        return []
    note = saturation_note(record.get("aux_fit"), record.get("config", {}))
    return [note] if note else []


def run_overview(root: str | Path) -> pd.DataFrame:
    """One row per run under `root`: name, direction, backbone, method, status, mean image AUROC."""
    from .atomic import read_json

    rows = []
    for name in run_names(root):
        path = Path(root).resolve() / name
        health = check_run(path)
        cfg: dict[str, Any] = {}
        mean: dict[str, Any] = {}
        try:
            cfg = read_json(path / CONFIG) if health.has(CONFIG) else {}
            mean = read_json(path / METRICS_FILE).get("mean", {}) if health.has(METRICS_FILE) else {}
        except SPGError:
            pass
        rows.append({"run": name, "aux": cfg.get("aux", "?"), "target": cfg.get("target", "?"),
                     "backbone": cfg.get("backbone", "?"), "method": cfg.get("method", "?"),
                     "status": health.status, **{METRIC_TITLES[k]: _pct(mean.get(k)) for k in METRICS}})
    return pd.DataFrame(rows)


def _pct(v: Any) -> float:
    return float("nan") if v is None or (isinstance(v, float) and math.isnan(v)) else 100.0 * float(v)


def config_summary(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's config.json grouped for display: experiment, SAE, guides, scoring, backbone."""
    top = {k: config.get(k) for k in ("aux", "target", "backbone", "weights", "method", "device_used")}
    return {"experiment": top, "SAE": dict(config.get("sae", {})), "guides": dict(config.get("guides", {})),
            "scoring": dict(config.get("score", {})), "backbone": dict(config.get("backbone_identity", {}))}


# -- metrics --------------------------------------------------------------------------------------

def metrics_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    """Per-category metrics in % (one row per category, the mean last), columns titled."""
    rows = {cat: {METRIC_TITLES[k]: _pct(m.get(k)) for k in METRICS}
            for cat, m in sorted(metrics.get("per_category", {}).items())}
    rows["mean"] = {METRIC_TITLES[k]: _pct(metrics.get("mean", {}).get(k)) for k in METRICS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "category"
    return frame


def paper_comparison(metrics: dict[str, Any]) -> tuple[str, pd.DataFrame] | None:
    """(paper row name, table of ours / paper / difference per category and metric) or None."""
    match = paper_row(metrics.get("settings", {}))
    if match is None:
        return None
    name, table = match
    ours = metrics_frame(metrics)
    rows = []
    for cat in ours.index:
        for key in METRICS:
            ref = table.get(key, {}).get(cat)
            mine = ours.loc[cat, METRIC_TITLES[key]]
            rows.append({"category": cat, "metric": METRIC_TITLES[key], "ours": mine,
                         "paper": float("nan") if ref is None else float(ref),
                         "difference": float("nan") if ref is None else mine - float(ref)})
    return name, pd.DataFrame(rows)


def per_category_long(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """{run name: metrics_frame} -> long table (run, category, metric, value) for grouped bars."""
    parts = []
    for run, frame in frames.items():
        long = frame.reset_index().melt(id_vars="category", var_name="metric", value_name="value")
        long.insert(0, "run", run)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "category", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


SWEEP_CSV = "sweep.csv"


def sweep_names(root: str | Path) -> list[str]:
    """Sweep folders (holding sweep.csv, from `spg sweep`) under `root`, as root-relative names.
    A run's own RUN/sweep is shown with its run, not listed here."""
    root = Path(root).resolve()
    if not root.is_dir():
        return []
    names = []
    for csv_path in sorted(root.glob(f"**/{SWEEP_CSV}")):
        if csv_path.parent.name == "sweep" and (csv_path.parent.parent / CONFIG).is_file():
            continue
        try:
            names.append(csv_path.parent.resolve().relative_to(root).as_posix())
        except ValueError:          # a symlink out of the root
            continue
    return names


def run_sweep_dir(run_dir: str | Path) -> Path | None:
    """RUN/sweep when the run carries a sweep of its own."""
    path = Path(run_dir) / "sweep"
    return path if (path / SWEEP_CSV).is_file() or any(path.glob("*.html")) else None


def sweep_frame(sweep_dir: str | Path) -> pd.DataFrame:
    """The tidy sweep table (one row per setting x category x metric); SPGError when unreadable."""
    path = Path(sweep_dir) / SWEEP_CSV
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise SPGError(f"sweep table cannot be read ({type(exc).__name__})", path=str(path),
                       fix="re-run the `spg sweep` command that wrote it") from None
    needed = {"category", "metric", "value", "aggregation", "guide", "width", "k", "backbone"}
    if not needed <= set(frame.columns):
        raise SPGError(f"sweep table lacks columns {sorted(needed - set(frame.columns))}", path=str(path),
                       fix="re-run the `spg sweep` command that wrote it")
    return frame


def sweep_html(sweep_dir: str | Path) -> list[Path]:
    """Pre-rendered HTML figures of a sweep (shown only when its sweep.csv is missing)."""
    return sorted(Path(sweep_dir).glob("*.html"))


# -- target images and thresholds -----------------------------------------------------------------

def best_f1_threshold(scores: Iterable[float], labels: Iterable[int]) -> float:
    """The image-score threshold with the best F1 (ties: the lowest), a sensible default cut-off."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=np.int64)
    if s.size == 0:
        return 0.5
    if y.sum() == 0 or y.sum() == y.size:
        return float(np.median(s))
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(1 - y_sorted)
    f1 = 2 * tp / (tp + fp + y.sum())
    # Only cut where the score changes, so the threshold separates distinct values.
    last_of_run = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    best = int(np.argmax(np.where(last_of_run, f1, -1)))
    return float(s_sorted[best])


def outcome(score: float, label: int, threshold: float) -> str:
    """'TP', 'FP', 'FN' or 'TN' for an image predicted anomalous when score >= threshold."""
    predicted = score >= threshold
    if label:
        return "TP" if predicted else "FN"
    return "FP" if predicted else "TN"


OUTCOME_FILTERS = {"all images": None, "false positives": "FP", "false negatives": "FN",
                   "true positives": "TP", "true negatives": "TN"}


def target_table(rows: list[dict[str, Any]], threshold: float) -> pd.DataFrame:
    """scores.csv rows -> DataFrame with the outcome at `threshold` and a short image name."""
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["index", "image_path", "category", "defect", "label", "score", "outcome", "name"])
    frame["outcome"] = [outcome(s, lab, threshold) for s, lab in zip(frame["score"], frame["label"])]
    frame["name"] = [f"{Path(p).parent.name}/{Path(p).name}" for p in frame["image_path"]]
    return frame


def filter_targets(frame: pd.DataFrame, category: str | None = None, defect: str | None = None,
                   kind: str | None = None) -> pd.DataFrame:
    """Rows of `target_table` for a category, defect type and outcome ('FP', 'FN', ...; None = any)."""
    keep = np.ones(len(frame), dtype=bool)
    if category:
        keep &= (frame["category"] == category).to_numpy()
    if defect:
        keep &= (frame["defect"] == defect).to_numpy()
    if kind:
        keep &= (frame["outcome"] == kind).to_numpy()
    return frame[keep]


def patch_at(row: int, col: int, grid: tuple[int, int]) -> int:
    """Flat patch index of grid cell (row, col), clamped to the grid."""
    h, w = grid
    return int(min(max(row, 0), h - 1) * w + min(max(col, 0), w - 1))


def peak_patch(probs: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the most anomalous patch of `[N]` (or `[h, w]`) patch probabilities."""
    flat = int(np.argmax(np.asarray(probs).reshape(-1)))
    return divmod(flat, grid[1])


# -- uploads ------------------------------------------------------------------------------------

def decode_upload(name: str, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES,
                  max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """Validate an uploaded file and decode it to 8-bit RGB, or raise SPGError saying why not.

    Checks, in order: extension, byte size, that it decodes as an image at all, pixel count
    (before decoding the pixels, so a decompression bomb is refused cheaply), full decode.
    """
    from .images import to_rgb

    ext = Path(name).suffix.lower().lstrip(".")
    if ext not in UPLOAD_TYPES:
        raise SPGError(f"{name}: .{ext or '?'} files are not accepted",
                       fix=f"upload an image: {', '.join('.' + t for t in UPLOAD_TYPES)}")
    if len(data) == 0:
        raise SPGError(f"{name} is empty", fix="upload the image file again")
    if len(data) > max_bytes:
        raise SPGError(f"{name} is {len(data) / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB limit",
                       fix="downscale or re-compress the image")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
            if w * h > max_pixels:
                raise SPGError(f"{name} is {w} x {h} pixels, more than {max_pixels / 1e6:.0f} megapixels",
                               fix="downscale the image")
            probe.load()
            return to_rgb(probe).copy()
    except SPGError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SPGError(f"{name} is corrupt, truncated or not an image ({type(exc).__name__})",
                       fix="re-export the image as PNG or JPEG") from None


# -- attribution views ------------------------------------------------------------------------------

def patch_contributions(attr: Any, patch: int, k: int = 6, image: int = 0,
                        tags: dict[int, str] | None = None) -> pd.DataFrame:
    """The atoms that push one patch most towards 'anomalous' and most towards 'normal'.

    `attr` is a `spg_core.atoms.Attribution`; contributions are to l_a - l_n (what the patch's
    probability depends on). Rows: atom, guide ('anomaly', 'normal' or 'both'), contribution,
    tag; the k largest positive first, then the k most negative.
    """
    atoms, net = attr.net()
    values = net[image, patch].detach().cpu().numpy()
    ids = atoms.cpu().numpy()
    in_a = set(attr.atoms_a.cpu().tolist())
    in_n = set(attr.atoms_n.cpu().tolist())
    order = np.argsort(-values, kind="stable")
    pos = [i for i in order[:k] if values[i] > 0]
    neg = [i for i in order[::-1][:k] if values[i] < 0]
    rows = []
    for i in pos + neg:
        j = int(ids[i])
        guide = "both" if j in in_a and j in in_n else ("anomaly" if j in in_a else "normal")
        rows.append({"atom": j, "guide": guide, "contribution": float(values[i]),
                     "tag": (tags or {}).get(j, "")})
    return pd.DataFrame(rows, columns=["atom", "guide", "contribution", "tag"])


def atom_table(ranking: dict[str, list[dict[str, Any]]], stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """Both guides' active atoms (from `atoms.rank_atoms`) as one table, joined with atom statistics.

    Columns: guide, rank (1 = largest coefficient), atom, coef, share (% of the guide), then every
    column of `stats` (keyed by its 'atom' column or index) such as the tag.
    """
    rows = [{"guide": guide, "rank": i + 1, **entry} for guide, entries in ranking.items()
            for i, entry in enumerate(entries)]
    table = pd.DataFrame(rows, columns=["guide", "rank", "atom", "coef", "share"])
    table["share"] = 100.0 * table["share"]
    if stats is not None and len(stats):
        extra = stats.reset_index() if "atom" not in stats.columns else stats
        extra = extra.rename(columns={"index": "atom"}) if "atom" not in extra.columns else extra
        # Dict-valued columns (top_categories ...) do not fit a table cell; the scalars do.
        scalar = [c for c in extra.columns if c not in ("guide", "rank", "coef", "share")
                  and not extra[c].map(lambda v: isinstance(v, (dict, list))).any()]
        table = table.merge(extra[scalar], on="atom", how="left")
    first = [c for c in ("guide", "rank", "atom", "tag", "share", "coef", "top_category", "dominant_defect",
                         "lift", "frequency") if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


def image_top_atoms(attr: Any, k: int = 6, image: int = 0, tags: dict[int, str] | None = None) -> pd.DataFrame:
    """The atoms that contribute most to one image's anomalous patches (`atoms.top_atoms_per_image`,
    net of the normal guide), as rows: atom, guide, contribution, tag."""
    from .atoms import top_atoms_per_image

    ids, values = top_atoms_per_image(attr, "net", k=k)
    in_a = set(attr.atoms_a.cpu().tolist())
    in_n = set(attr.atoms_n.cpu().tolist())
    rows = []
    for j, v in zip(ids[image].tolist(), values[image].tolist()):
        guide = "both" if j in in_a and j in in_n else ("anomaly" if j in in_a else "normal")
        rows.append({"atom": int(j), "guide": guide, "contribution": float(v), "tag": (tags or {}).get(int(j), "")})
    return pd.DataFrame(rows, columns=["atom", "guide", "contribution", "tag"])


def common_targets(tables: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Target images scored by every run: {run: scores.csv rows} -> image_path, category, defect, label,
    and each run's row index (column per run)."""
    frames = []
    for run, rows in tables.items():
        f = pd.DataFrame(rows)[["image_path", "category", "defect", "label", "index"]].rename(columns={"index": run})
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=["image_path", "category", "defect", "label"])
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f[["image_path", f.columns[-1]]], on="image_path", how="inner")
    out["name"] = [f"{Path(p).parent.name}/{Path(p).name}" for p in out["image_path"]]
    return out


# -- atom detail ------------------------------------------------------------------------------------

@dataclass
class AtomTile:
    """One top-activating auxiliary patch of an atom, ready to show."""

    crop: Image.Image           # the patch with context, its cell boxed (red: inside a defect mask)
    heat: Image.Image           # the atom's activation over the whole image, patch boxed
    caption: str


def atom_tiles(index: Any, records: list[dict[str, Any]], sae: Any, store: Any, atom: int, *,
               count: int = 8, context: int = 2, tile: int = 160) -> list[AtomTile]:
    """The atom's `count` top auxiliary patches (from its AtomIndex) as crop + heatmap pictures.

    Heatmaps of one atom share the scale [0, its largest activation], as in the paper's Figure 5.
    """
    from .atoms.visual import IN_MASK, OUT_MASK, atom_heatmap, heatmap_overlay, patch_crop
    from .images import load_image

    entries = index.entries(atom)[:count]
    grid, size = tuple(index.meta["grid"]), int(index.meta["image_size"])
    vmax = max((e["value"] for e in entries), default=1.0)
    tiles = []
    for e in entries:
        record = records[e["image"]]
        image = load_image(record["image_path"]).resize((size, size), Image.BICUBIC)
        colour = IN_MASK if e["mask_fraction"] > 0 else OUT_MASK
        heat = atom_heatmap(sae, store.tokens([e["image"]])[0], atom, grid, size)
        tiles.append(AtomTile(
            crop=patch_crop(image, e["patch"], grid, size, context, tile, outline=colour),
            heat=heatmap_overlay(image, heat, vmax, patch=e["patch"], grid=grid, outline=colour).resize(
                (tile, tile), Image.BILINEAR),
            caption=f"{record['category']} · {record['defect']} · s={e['value']:.2f}"))
    return tiles


def category_profile(index: Any, atom: int) -> pd.Series:
    """Mean activation of `atom` per auxiliary category (its category histogram), from the index totals."""
    names = list(index.meta.get("categories") or [])
    mass = index.counts.category_mass[atom].double().numpy()
    tokens = index.counts.category_tokens.double().numpy()
    values = mass / np.maximum(tokens, 1)
    return pd.Series(values, index=names or [str(i) for i in range(len(values))], name="mean activation")


def atom_activation_sample(sae: Any, store: Any, atom: int, *, include: Iterable[int] = (),
                           flop_budget: float = 2e10) -> tuple[np.ndarray, int]:
    """The atom's non-zero activations over auxiliary images, the data of its activation histogram.

    Every image when encoding them all fits `flop_budget` (T * M * D multiply-adds), else an evenly
    spaced sample plus the images in `include` (its top-activating ones, so a rare atom still shows).
    Returns (activations > 0, number of images encoded).
    """
    from .atoms.visual import atom_activation

    n = store.num_images
    per_image = store.num_patches * sae.width * sae.dim
    budget = max(1, int(flop_budget // max(per_image, 1)))
    picks = set(int(i) for i in include if 0 <= int(i) < n)
    if budget >= n:
        picks = set(range(n))
    elif budget > len(picks):
        picks |= set(np.linspace(0, n - 1, num=budget - len(picks)).round().astype(int).tolist())
    values = [atom_activation(sae, store.tokens([i])[0], atom).numpy() for i in sorted(picks)]
    flat = np.concatenate(values) if values else np.zeros(0)
    return flat[flat > 0], len(picks)


def ablation_frame(before: dict[str, Any], after: dict[str, Any]) -> pd.DataFrame:
    """Per-category metrics (%) before and after an ablation, with the change, in long form."""
    a, b = metrics_frame(before), metrics_frame(after)
    rows = []
    for cat in a.index:
        for col in a.columns:
            rows.append({"category": cat, "metric": col, "before": a.loc[cat, col],
                         "after": b.loc[cat, col] if cat in b.index else float("nan")})
    frame = pd.DataFrame(rows)
    frame["change"] = frame["after"] - frame["before"]
    return frame


def most_changed(before: Any, after: Any, k: int = 12) -> list[int]:
    """Indices of the `k` images whose score changed most (largest |after - before| first)."""
    delta = np.abs(np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64))
    return [int(i) for i in np.argsort(-delta, kind="stable")[:k]]


def format_score(value: float) -> str:
    """An image score or probability for display: 3 decimals, or 3 significant digits when tiny."""
    value = float(value)
    return f"{value:.3f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def threshold_range(scores: Iterable[float]) -> tuple[float, float, float, str]:
    """(min, max, step, printf format) of a threshold slider spanning the run's image scores.

    Scores are probabilities, but a weak run can have every score below 1e-3, where a fixed
    [0, 1] slider could not separate them; the slider follows the scores instead.
    """
    s = np.asarray(list(scores), dtype=np.float64)
    lo, hi = (float(s.min()), float(s.max())) if s.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        hi = lo + max(abs(lo) * 1e-3, 1e-9)
    step = float(f"{(hi - lo) / 500:.2g}")
    lo = float(np.floor(lo / step) * step)
    hi = float(np.ceil(hi / step) * step)
    return lo, hi, step, "%.3f" if step >= 1e-3 else "%.2e"
