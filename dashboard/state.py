"""Shared state of SPG Studio: the runs root, the chosen run, and cached loaders.

Heavy objects (models, token stores, atom indexes) sit behind `st.cache_resource`,
so every browser session shares one copy; small derived data behind
`st.cache_data`. Every loader takes the run's artifact signature (mtimes), so a
run that is rewritten on disk is reloaded instead of served stale.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from spg_core import run_paths, uploads
from spg_core.errors import SPGError

from .viewmodels import atom_detail, attribution, health, sweeps, targets

RUN_KEY = "chosen_run"  # session_state key of the chosen run (root-relative name)
RUN_WIDGET = "run"  # key of the sidebar's run selectbox
ATOM_KEY = "atom"  # session_state key of the atom opened on the Atom detail page


# -- runs root and chosen run ------------------------------------------------------------------


def runs_root() -> Path:
    """The runs root the launcher passed in `$SPG_RUNS_ROOT` (default ./runs)."""
    return run_paths.runs_root()


@st.cache_data(ttl=5, show_spinner=False)
def run_names(root: str) -> list[str]:
    """Run names under the root; a short TTL so new runs appear without a restart."""
    return run_paths.run_names(root)


@st.cache_data(ttl=5, show_spinner=False)
def run_overview(root: str):
    return health.run_overview(root)


def current_run() -> Path | None:
    """The chosen run's directory (validated inside the root), or None when there is none."""
    name = st.session_state.get(RUN_KEY)
    if not name:
        return None
    return run_paths.resolve_run(runs_root(), name)


def signature(run: Path) -> tuple[float, ...]:
    return health.run_signature(run)


# -- run artifacts ----------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=32)
def run_config(path: str, sig: tuple[float, ...]) -> dict[str, Any]:
    from spg_core.runs import RunDir

    return RunDir(path).read_config()


@st.cache_data(show_spinner=False, max_entries=32)
def run_metrics(path: str, sig: tuple[float, ...]) -> dict[str, Any]:
    from spg_core.runs import RunDir

    return RunDir(path).read_metrics()


@st.cache_resource(show_spinner="Loading the run's model ...", max_entries=8)
def predictor(path: str, sig: tuple[float, ...]):
    """The run's Predictor (SAE, guides, scorer); the backbone loads on first image."""
    from spg_core.inference import Predictor

    return Predictor(path, device="cpu")


@dataclass
class TargetOutputs:
    """A run's stored target outputs: patch maps `[K, h, w]`, score rows, grid and image size.
    (Not `pipeline.target_maps`, which upsamples patch maps to full maps.)"""

    probs: np.ndarray
    rows: list[dict[str, Any]]
    grid: tuple[int, int]
    image_size: int


@st.cache_resource(show_spinner="Loading target maps ...", max_entries=8)
def target_outputs(path: str, sig: tuple[float, ...]) -> TargetOutputs:
    from spg_core.runs import RunDir

    run = RunDir(path)
    probs, _, meta = run.read_target()
    rows = run.read_scores()
    if len(rows) != probs.shape[0]:
        raise SPGError(
            f"scores.csv has {len(rows)} rows but the maps file has {probs.shape[0]} maps",
            path=str(run.file("target")),
            fix="re-run `spg eval --run DIR`",
        )
    grid = tuple(meta.get("grid", probs.shape[1:]))
    return TargetOutputs(probs.numpy(), rows, grid, int(meta.get("image_size", 0)))  # type: ignore[arg-type]


@st.cache_resource(show_spinner="Opening token store ...", max_entries=8)
def token_store(path: str):
    """A TokenStore (memory-mapped shards: cheap to share between sessions)."""
    from spg_core.store import TokenStore

    return TokenStore(path)


def store_of(run: Path, which: str):
    """The run's 'aux_store' or 'target_store', with a clear error when the config lacks it."""
    cfg = run_config(str(run), signature(run))
    path = cfg.get(which)
    if not path:
        raise SPGError(
            f"the run's config has no {which}",
            path=str(run / "config.json"),
            fix="re-run `spg eval --run DIR` to record it",
        )
    return token_store(str(path))


@st.cache_resource(show_spinner="Loading atoms ...", max_entries=8)
def atoms(path: str, sig: tuple[float, ...]):
    """(AtomIndex, stats DataFrame) from RUN/atoms."""
    from spg_core.atoms import load_atoms

    return load_atoms(path)


@st.cache_data(show_spinner="Setting the decision threshold on the auxiliary set ...", max_entries=16)
def run_threshold(path: str, sig: tuple[float, ...]) -> dict[str, Any]:
    """RUN/threshold.json (thresholds.run_threshold: computed and recorded first for runs without one)."""
    from spg_core.thresholds import run_threshold as recorded

    return recorded(path, predictor=predictor(path, sig))


def smoothing_sigma(path: str, sig: tuple[float, ...]) -> float:
    """The run's protocol smoothing (pixels), as its metrics were computed with."""
    settings = run_metrics(path, sig).get("settings", {}) if (Path(path) / "metrics.json").is_file() else {}
    if "smoothing_sigma" in settings:
        return float(settings["smoothing_sigma"])
    return float(run_config(path, sig).get("score", {}).get("smoothing_sigma", 0.0))


@st.cache_data(show_spinner=False, max_entries=64)
def target_frame(path: str, sig: tuple[float, ...], threshold: float):
    """targets.target_table of the run's target images at `threshold` (outcome and short name per image)."""
    return targets.target_table(target_outputs(path, sig).rows, threshold)


# -- images -----------------------------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=256)
def image_at(path: str, size: int) -> np.ndarray:
    """An image file as RGB uint8 `[size, size, 3]` (the backbone's input view)."""
    from spg_core.images import load_image

    return np.asarray(load_image(path).resize((size, size), Image.BICUBIC))


def stored_mask(run: Path, which: str, index: int) -> np.ndarray:
    """Ground-truth mask `[S, S]` bool of image `index` of the run's 'target_store' or 'aux_store'."""
    return store_of(run, which).masks([index])[0].numpy() > 0.5


def target_mask(run: Path, index: int) -> np.ndarray:
    """Ground-truth mask `[S, S]` bool of target image `index` (from the target store)."""
    return stored_mask(run, "target_store", index)


@st.cache_data(show_spinner=False, max_entries=16)
def store_images(path: str, sig: tuple[float, ...], which: str) -> list[dict[str, Any]]:
    """The image records (image_path, category, defect, label) of the run's 'target_store' or 'aux_store'."""
    return store_of(Path(path), which).images


@st.cache_data(show_spinner=False, max_entries=128)
def stored_patch_map(path: str, sig: tuple[float, ...], which: str, index: int) -> tuple[np.ndarray, float]:
    """(patch probabilities `[h, w]`, image score) of image `index` of the run's 'target_store' or
    'aux_store', scored by the run's Scorer from the stored tokens (auxiliary images have no stored maps)."""
    pred = predictor(path, sig)
    store = store_of(Path(path), which)
    probs, _, scores = pred.scorer(store.tokens([index]), store.cls([index]))
    return probs[0].reshape(store.grid).numpy(), float(scores[0])


# -- attribution -------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=64)
def stored_attribution(path: str, sig: tuple[float, ...], which: str, index: int):
    """(tokens `[1, N, D]`, atoms.Attribution) of image `index` of the run's 'target_store' or 'aux_store':
    computed once per image, so moving a region over it only averages (region -> atoms)."""
    from spg_core.atoms import attribute

    pred = predictor(path, sig)
    tokens = store_of(Path(path), which).tokens([index])
    return tokens, attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)


def target_attribution(path: str, sig: tuple[float, ...], index: int):
    """Per-atom contributions for every patch of target image `index` (an atoms.Attribution)."""
    return stored_attribution(path, sig, "target_store", index)[1]


@st.cache_data(show_spinner=False, max_entries=256)
def patch_contributions(path: str, sig: tuple[float, ...], index: int, patch: int, k: int = 6):
    """attribution.patch_contributions of one patch of target image `index` (tagged)."""
    return attribution.patch_contributions(target_attribution(path, sig, index), patch, k=k, tags=atom_tags(path, sig))


def atom_tags(path: str, sig: tuple[float, ...]) -> dict[int, str]:
    """{atom: tag} from the run's atom statistics, or {} when the run has no atom index. A flagged
    atom's tag carries its mark ('shared ⚑ border', atoms.flags.flag_mark), so every table shows it."""
    try:
        _, stats = atoms(path, sig)
    except (SPGError, ImportError):
        return {}
    if stats is None or "tag" not in getattr(stats, "columns", []):
        return {}
    ids = stats["atom"] if "atom" in stats.columns else stats.index
    from spg_core.atoms.flags import flag_mark  # here, like the other engine imports: the app starts without torch

    flags = stats["flags"] if "flags" in stats.columns else [""] * len(stats)
    return {int(a): str(t) + flag_mark(f) for a, t, f in zip(ids, stats["tag"], flags)}


@st.cache_data(show_spinner=False, max_entries=16)
def atom_ranking(path: str, sig: tuple[float, ...]) -> dict[str, list[dict[str, Any]]]:
    """Both guides' active atoms, largest coefficient first (atoms.rank_atoms)."""
    from spg_core.atoms import rank_atoms

    return rank_atoms(predictor(path, sig).guides)


@st.cache_resource(show_spinner=False, max_entries=64)
def stored_image_atoms(path: str, sig: tuple[float, ...], which: str, index: int):
    """atoms.region.ImageAtoms (SAE codes and net contributions) of image `index` of the run's
    'target_store' or 'aux_store': once per image, so a new region costs two masked means."""
    from spg_core.atoms.region import image_atoms

    tokens, attr = stored_attribution(path, sig, which, index)
    return image_atoms(predictor(path, sig).sae, tokens[0], attr)


@st.cache_data(show_spinner=False, max_entries=256)
def stored_region_atoms(
    path: str, sig: tuple[float, ...], which: str, index: int, rows: tuple[int, int], cols: tuple[int, int], k: int = 8
):
    """atoms.region.RegionAtoms for grid cells rows x cols of image `index` of the run's
    'target_store' or 'aux_store'."""
    from spg_core.atoms.region import cell_patches, rank_region

    grid = store_of(Path(path), which).grid
    return rank_region(stored_image_atoms(path, sig, which, index), cell_patches(rows, cols, grid), k=k)


@st.cache_resource(show_spinner=False, max_entries=32)
def upload_image_atoms(path: str, sig: tuple[float, ...], name: str, data: bytes):
    """atoms.region.ImageAtoms of an uploaded image (scored by `predict_upload`)."""
    from spg_core.atoms import attribute
    from spg_core.atoms.region import image_atoms

    pred = predictor(path, sig)
    tokens = predict_upload(path, sig, name, data).tokens[None]
    attr = attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    return image_atoms(pred.sae, tokens[0], attr)


@st.cache_data(show_spinner=False, max_entries=256)
def upload_region_atoms(
    path: str, sig: tuple[float, ...], name: str, data: bytes, rows: tuple[int, int], cols: tuple[int, int], k: int = 8
):
    """atoms.region.RegionAtoms for grid cells rows x cols of an uploaded image."""
    from spg_core.atoms.region import cell_patches, rank_region

    grid = predict_upload(path, sig, name, data).probs.shape
    return rank_region(upload_image_atoms(path, sig, name, data), cell_patches(rows, cols, grid), k=k)


@st.cache_resource(show_spinner="Measuring each guide atom inside each auxiliary defect kind ...", max_entries=8)
def kind_map(path: str, sig: tuple[float, ...]):
    """atoms.kinds.KindMap of the run's live guide atoms (cached in RUN/atoms/kinds.*)."""
    from spg_core.atoms.kinds import run_kind_map

    dead = {a for a, t in atom_tags(path, sig).items() if t == "dead"}
    ranking = atom_ranking(path, sig)
    atoms = sorted({a["atom"] for g in ranking.values() for a in g} - dead)
    return run_kind_map(path, predictor(path, sig).sae, store_of(Path(path), "aux_store"), atoms)


@st.cache_resource(show_spinner="Finding the atom's patches in this defect kind ...", max_entries=64)
def kind_tiles(path: str, sig: tuple[float, ...], atom: int, category: str, defect: str, count: int = 6) -> list[Tile]:
    """The atom's strongest in-mask patches among auxiliary images of one defect kind, as crops."""
    from spg_core.atoms.kinds import kind_patches
    from spg_core.atoms.visual import IN_MASK, patch_crop
    from spg_core.images import load_image

    store = store_of(Path(path), "aux_store")
    found = kind_patches(predictor(path, sig).sae, store, atom, (category, defect), count)
    size = store.image_size
    tiles = []
    for e in found:
        record = store.images[e["image"]]
        image = load_image(record["image_path"]).resize((size, size), Image.BICUBIC)
        crop = png(patch_crop(image, e["patch"], store.grid, size, 2, 150, outline=IN_MASK))
        tiles.append(Tile(crop, crop, f"{record['category']} · {record['defect']} · s={e['value']:.2f}"))
    return tiles


# -- atom detail and ablation ------------------------------------------------------------------


@dataclass
class Tile:
    """An atom tile encoded once: st.image re-encodes a PIL image on every rerun, bytes it passes on."""

    crop: bytes
    heat: bytes
    caption: str


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@st.cache_resource(show_spinner="Drawing the atom's top patches ...", max_entries=64)
def atom_tiles(path: str, sig: tuple[float, ...], atom: int, count: int) -> list[Tile]:
    index, _ = atoms(path, sig)
    store = store_of(Path(path), "aux_store")
    tiles = atom_detail.atom_tiles(index, store.images, predictor(path, sig).sae, store, atom, count=count)
    return [Tile(png(t.crop), png(t.heat), t.caption) for t in tiles]


@st.cache_data(show_spinner="Encoding auxiliary images ...", max_entries=64)
def atom_activations(path: str, sig: tuple[float, ...], atom: int) -> tuple[np.ndarray, int]:
    """(the atom's activations where it fires, number of auxiliary images encoded)."""
    index, _ = atoms(path, sig)
    store = store_of(Path(path), "aux_store")
    top_images = [e["image"] for e in index.entries(atom)]
    return atom_detail.atom_activation_sample(predictor(path, sig).sae, store, atom, include=top_images)


@st.cache_resource(show_spinner="Preparing what-if ablations (projecting target tokens) ...", max_entries=4)
def ablator(path: str, sig: tuple[float, ...]):
    """An atoms.Ablator over the run's target tokens (one per run, shared by every session)."""
    from spg_core.atoms import Ablator

    return Ablator(predictor(path, sig), store=store_of(Path(path), "target_store"))


@st.cache_resource(show_spinner="Recomputing maps and metrics without the atom ...", max_entries=64)
def ablation(path: str, sig: tuple[float, ...], atom: int | None, guide: str):
    """AblationResult with `atom` removed from `guide` (None: the unedited baseline)."""
    tool = ablator(path, sig)
    return tool.baseline() if atom is None else tool.ablate(remove=[atom], guide=guide)


# -- new images -----------------------------------------------------------------------------------


@dataclass
class Prediction:
    """One uploaded image scored by a run: the model's view, patch map, score, top atoms."""

    image: np.ndarray  # [S, S, 3] uint8, as the backbone saw it
    probs: np.ndarray  # [h, w] patch anomaly probabilities
    score: float
    tokens: Any  # [N, D] float32 tensor (for region queries)
    atoms: Any  # DataFrame from attribution.image_top_atoms (empty without a dictionary)


@st.cache_data(show_spinner="Scoring the image ...", max_entries=64)
def predict_upload(path: str, sig: tuple[float, ...], name: str, data: bytes) -> Prediction:
    """Validate, decode and score an uploaded file (SPGError with the reason when it is refused)."""
    pred = predictor(path, sig)
    image = uploads.decode_upload(name, data)
    out = pred.predict_images([image])
    grid, size = pred.scorer.grid, pred.backbone.image_size
    top = None
    if pred.sae is not None:
        from spg_core.atoms import attribute

        attr = attribute(out["tokens"], pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
        top = attribution.image_top_atoms(attr, k=6, tags=atom_tags(path, sig))
    view = np.asarray(image.resize((size, size), Image.BICUBIC))
    return Prediction(view, out["probs"][0].reshape(grid).numpy(), float(out["scores"][0]), out["tokens"][0], top)


# -- sweeps ---------------------------------------------------------------------------------------


@st.cache_data(ttl=5, show_spinner=False)
def sweep_names(root: str) -> list[str]:
    return sweeps.sweep_names(root)


@st.cache_data(show_spinner="Drawing the sweep ...", max_entries=16)
def sweep_figures(path: str, mtime: float) -> dict[str, Any]:
    """The sweep's plotly figures (spg_core.sweep.sweep_figures over its sweep.csv)."""
    from spg_core.sweep import sweep_figures as figures

    return figures(sweeps.sweep_frame(path))
