"""The atoms artifacts of a run: build, load (with staleness checks) and the gallery PNG.

    RUN/atoms/index.safetensors   AtomIndex tensors + metadata (index.json: readable summary)
    RUN/atoms/stats.json          per-atom statistics, tag rule, artefact flags (stats.csv: scalar columns)
    RUN/atoms/summaries.safetensors  what every per-atom view reads (summaries.py): histograms, band and
                                  random samples, target top patches, neighbours
    RUN/atoms/gallery.png         top anomaly-guide atoms, Figure-5 layout

The index depends on the SAE and the auxiliary tokens only (not on the guides),
so it records the SAE file's SHA-256 and refuses to load after a re-trained SAE; the summaries
record it too, and `ensure_summaries` rebuilds them (and the flags in stats.json) when they are
missing, of another version or made for another SAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .. import distributed
from ..atomic import file_sha256
from ..errors import SPGError
from ..inference import Predictor
from ..run_lock import command_line, run_lock
from ..runs import SAE_FILE as SAE
from ..runs import RunDir
from ..sae import TopKSAE
from ..store import TokenStore
from .flags import BORDER_BAND, BORDER_LIFT, FLAG_RULE, IMAGE_SHARE, POSITION_SHARE, POSITION_TOP, flag_stats
from .index import AtomIndex, build_atom_index, load_index, save_index
from .ranking import rank_atoms, require_atoms
from .stats import atom_stats, load_stats, save_stats
from .summaries import AtomSummaries, build_summaries, load_summaries, save_summaries
from .texture import BLANK_QUANTILE
from .visual import GalleryRow, render_gallery, save_png

INDEX = "atoms/index.safetensors"
STATS_JSON = "atoms/stats.json"
STATS_CSV = "atoms/stats.csv"
GALLERY = "atoms/gallery.png"
SUMMARIES = "atoms/summaries.safetensors"
FIX = "run `spg atoms --run {run}`"


def open_aux_store(config: dict[str, Any], run_path: str | Path) -> TokenStore:
    """The run's auxiliary token store, with a fix when the cache no longer holds it."""
    path = config.get("aux_store")
    if not path or not (Path(path) / "manifest.json").is_file():
        raise SPGError(
            "the run's auxiliary token store is missing (cache deleted or moved)",
            path=str(path),
            fix=f"re-extract it with `spg extract --dataset {config.get('aux', 'AUX')} --backbone "
            f"{config.get('backbone', 'BACKBONE')}` (same --cache-dir), then " + FIX.format(run=run_path),
        )
    return TokenStore(path)


def _run_sae(run: RunDir, config: dict[str, Any]) -> TopKSAE:
    if config.get("method") == "free_guides":
        raise SPGError(
            "this run uses free guides (no dictionary): it has no atoms to index",
            path=str(run.path),
            fix="build atoms for a run trained with --method spg (or random_dict)",
        )
    return TopKSAE.load(str(run.file(SAE)))[0]


def build_atoms(
    run_dir: str | Path,
    *,
    progress: bool = True,
    top_p: int = 16,
    device: str = "auto",
    chunk_tokens: int | None = None,
) -> None:
    """Build and write RUN/atoms/index.safetensors (+ .json) and stats.json (+ .csv).

    One streaming pass of the run's SAE over its auxiliary token store (on CUDA when present),
    under the run's write lock (so the SAE cannot change under it).
    """
    run = RunDir(run_dir)
    with run_lock(run.path, command_line()):
        config = run.read_config()
        sae = _run_sae(run, config)
        store = open_aux_store(config, run.path)
        index = build_atom_index(store, sae, top_p=top_p, device=device, chunk_tokens=chunk_tokens, progress=progress)
        if not distributed.is_main():  # under torchrun every rank holds the merged index; one writes it
            return
        index.meta["sae_sha256"] = file_sha256(run.file(SAE))
        save_index(index, run.file(INDEX))
        write_summaries(run, sae, store, atom_stats(index, store.images), top_p=top_p, chunk_tokens=chunk_tokens)


def target_store_of(config: dict[str, Any]) -> TokenStore | None:
    """The run's target token store, or None when the run has none (not evaluated, or the cache is gone)."""
    path = config.get("target_store")
    return TokenStore(path) if path and (Path(path) / "manifest.json").is_file() else None


def flag_thresholds(summaries: AtomSummaries) -> dict[str, Any]:
    """The flag rule's settings as saved beside the flags (a change marks the saved flags stale)."""
    return {
        "border_lift": BORDER_LIFT,
        "border_band": BORDER_BAND,
        "position_top": POSITION_TOP,
        "position_share": POSITION_SHARE,
        "image_share": IMAGE_SHARE,
        "blank_quantile": BLANK_QUANTILE,
        "blank_floor": summaries.meta.get("blank_floor"),
    }


def with_flags(stats: pd.DataFrame, summaries: AtomSummaries) -> pd.DataFrame:
    """`stats` with the artefact columns of flags.flag_stats (replaced if present) and their rule."""
    flags = flag_stats(
        summaries.position_mass,
        summaries.image_count,
        int(summaries.meta["num_images"]["aux"]),
        tuple(summaries.meta["grid"]),
        summaries.pixel_std,
        summaries.meta.get("blank_floor"),
    )
    out = pd.concat([stats.drop(columns=[c for c in flags.columns if c in stats.columns]), flags], axis=1)
    out.attrs = {
        **stats.attrs,
        "flag_rule": FLAG_RULE,
        "flag_thresholds": flag_thresholds(summaries),
    }
    return out


def write_summaries(
    run: RunDir,
    sae: TopKSAE,
    store: TokenStore,
    stats: pd.DataFrame,
    *,
    top_p: int = 16,
    chunk_tokens: int | None = None,
) -> AtomSummaries:
    """Build RUN/atoms/summaries.safetensors and write stats.json (+ .csv) with the artefact flags."""
    summaries = build_summaries(sae, store, target_store_of(run.read_config()), top_p=top_p, chunk_tokens=chunk_tokens)
    summaries.meta["sae_sha256"] = file_sha256(run.file(SAE))
    save_summaries(summaries, run.file(SUMMARIES))
    save_stats(with_flags(stats, summaries), run.file(STATS_JSON), run.file(STATS_CSV))
    return summaries


def ensure_summaries(run_dir: str | Path) -> AtomSummaries:
    """The run's summaries; built first (with the flags) when missing, of another version or for another SAE.

    Needs the atom index (SPGError naming `spg atoms` otherwise) and the auxiliary token store.
    """
    run = RunDir(run_dir)
    _, stats = load_atoms(run.path)
    path = run.file(SUMMARIES)
    if path.is_file():
        try:
            summaries = load_summaries(path)
            if summaries.meta.get("sae_sha256") == file_sha256(run.file(SAE)):
                if stats.attrs.get("flag_thresholds") != flag_thresholds(summaries):  # flags of an older rule
                    save_stats(with_flags(stats, summaries), run.file(STATS_JSON), run.file(STATS_CSV))
                return summaries
        except SPGError:
            pass  # another version or damaged: rebuilt below
    config = run.read_config()
    return write_summaries(run, _run_sae(run, config), open_aux_store(config, run.path), stats)


def load_atoms(run_dir: str | Path) -> tuple[AtomIndex, pd.DataFrame]:
    """(AtomIndex, stats DataFrame) of a run; SPGError naming the fix when missing, damaged or stale."""
    run = RunDir(run_dir)
    fix = FIX.format(run=run.path)
    if not run.file(INDEX).is_file():
        raise SPGError("this run has no atom index yet", path=str(run.file(INDEX)), fix=fix)
    index = load_index(run.file(INDEX))
    stats = load_stats(run.file(STATS_JSON))
    if len(stats) != index.width:
        raise SPGError(
            f"atom statistics list {len(stats)} atoms but the index has {index.width}",
            path=str(run.file(STATS_JSON)),
            fix=fix,
        )
    if run.exists(SAE) and index.meta.get("sae_sha256") != file_sha256(run.file(SAE)):
        raise SPGError(
            "the atom index was built for another SAE (the run's SAE was re-trained since)",
            path=str(run.file(INDEX)),
            fix=fix,
        )
    return index, stats


def _label(atom: dict[str, Any], row: pd.Series) -> list[str]:
    lines = [f"atom #{atom['atom']}", f"c_a {atom['coef']:.3g} ({atom['share']:.1%} of guide)", str(row["tag"])]
    if pd.notna(row["selectivity"]):
        lift = f" ({row['lift']:.1f}x base)" if pd.notna(row["lift"]) else ""
        lines.append(f"in-mask mass {row['selectivity']:.2f}{lift}")
        lines.append(f"mass: {row['top_category_share']:.0%} {row['top_category']}")
    if isinstance(row["dominant_defect"], str):
        lines.append(f"{row['dominant_defect']} in {row['n_defect_categories']} cat.")
    return lines


def write_gallery(
    run_dir: str | Path, n_atoms: int = 8, *, per_atom: int = 9, device: str = "auto", tile: int = 96
) -> Path:
    """RUN/atoms/gallery.png: the `n_atoms` largest anomaly-guide atoms, `per_atom` top patches each."""
    predictor = Predictor(run_dir, device=device)
    require_atoms(predictor.guides)
    index, stats = load_atoms(run_dir)
    store = open_aux_store(predictor.config_json, predictor.run.path)
    ranked = rank_atoms(predictor.guides)["anomaly"][:n_atoms]
    rows = [
        GalleryRow(a["atom"], _label(a, stats.iloc[a["atom"]]), index.entries(a["atom"])[:per_atom]) for a in ranked
    ]
    sae = predictor.sae.to(predictor.device)
    cache: dict[int, torch.Tensor] = {}

    def tokens_of(image: int) -> torch.Tensor:
        if image not in cache:
            cache[image] = store.tokens([image])[0]
        return cache[image]

    cfg = predictor.cfg
    title = (
        f"{cfg.aux} -> {cfg.target} [{cfg.backbone}]: top {len(rows)} anomaly-guide atoms by coefficient, "
        f"top auxiliary patches (red box: inside a defect mask)"
    )
    image = render_gallery(rows, store.images, sae, tokens_of, store.grid, store.image_size, title=title, tile=tile)
    save_png(image, predictor.run.file(GALLERY))
    return predictor.run.file(GALLERY)
