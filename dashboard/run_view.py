"""A run as the dashboard sees it: its directory, its artifact signature, and every cached loader as a method.

`RunView` is a frozen dataclass of (path, signature); Streamlit's cache hashes a dataclass by its
fields, so each cached method is keyed on the run and on the mtimes of its artifacts: a run
rewritten on disk is reloaded instead of served stale. Heavy objects (models, token stores, atom
indexes) sit behind `st.cache_resource`, shared by every browser session; small derived data
behind `st.cache_data`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from spg_core.atoms import Ablator, attribute, load_atoms, rank_atoms
from spg_core.atoms.flags import flag_mark
from spg_core.atoms.kinds import kind_patches, run_kind_map
from spg_core.atoms.region import cell_patches, image_atoms, rank_region
from spg_core.atoms.visual import IN_MASK, patch_crop
from spg_core.errors import SPGError
from spg_core.images import load_image
from spg_core.inference import Predictor
from spg_core.runs import RunDir
from spg_core.store import TokenStore
from spg_core.thresholds import ensure_run_threshold

from .encode import png_bytes
from .viewmodels import atom_detail, attribution, health, targets


class Store(str, Enum):
    """A run's two token stores, named as its config.json names them."""

    TARGET = "target_store"  # the images the run was evaluated on
    AUX = "aux_store"  # the labelled images its guides were fitted on

    @property
    def label(self) -> str:
        """The store in a sentence: 'target' or 'auxiliary'."""
        return "target" if self is Store.TARGET else "auxiliary"


@dataclass
class TargetOutputs:
    """A run's stored target outputs: patch maps `[K, h, w]`, score rows, grid and image size.
    (Not `pipeline.target_maps`, which upsamples patch maps to full maps.)"""

    probs: np.ndarray
    rows: list[dict[str, Any]]
    grid: tuple[int, int]
    image_size: int


@dataclass
class Tile:
    """An atom tile encoded once (PNG bytes of the crop and the activation heatmap) and its caption."""

    crop: bytes
    heat: bytes
    caption: str


@st.cache_resource(show_spinner="Opening token store ...", max_entries=8)
def token_store(path: str) -> TokenStore:
    """A TokenStore (memory-mapped shards: cheap to share between sessions and runs)."""
    return TokenStore(path)


@dataclass(frozen=True)
class RunView:
    """One run directory and the signature (artifact mtimes) its cached loaders are keyed on."""

    path: Path
    sig: tuple[float, ...]

    @classmethod
    def of(cls, path: str | Path) -> RunView:
        """The run at `path` with its current signature (read on every page run: a few stat calls)."""
        return cls(Path(path), health.run_signature(path))

    @property
    def name(self) -> str:
        return self.path.name

    # -- artifacts --------------------------------------------------------------------------------

    @st.cache_data(show_spinner=False, max_entries=32)
    def config(self) -> dict[str, Any]:
        return RunDir(self.path).read_config()

    @st.cache_data(show_spinner=False, max_entries=32)
    def metrics(self) -> dict[str, Any]:
        return RunDir(self.path).read_metrics()

    @st.cache_resource(show_spinner="Loading the run's model ...", max_entries=8)
    def predictor(self) -> Predictor:
        """The run's Predictor (SAE, guides, scorer); the backbone loads on first image."""
        return Predictor(self.path, device="cpu")

    @st.cache_resource(show_spinner="Loading target maps ...", max_entries=8)
    def target_outputs(self) -> TargetOutputs:
        run = RunDir(self.path)
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

    def store(self, which: Store) -> TokenStore:
        """The run's target or auxiliary token store, with a clear error when the config lacks it."""
        path = self.config().get(which.value)
        if not path:
            raise SPGError(
                f"the run's config has no {which.value}",
                path=str(self.path / "config.json"),
                fix="re-run `spg eval --run DIR` to record it",
            )
        return token_store(str(path))

    @st.cache_resource(show_spinner="Loading atoms ...", max_entries=8)
    def atoms(self):
        """(AtomIndex, stats DataFrame) from RUN/atoms."""
        return load_atoms(self.path)

    @st.cache_data(show_spinner="Setting the decision threshold on the auxiliary set ...", max_entries=16)
    def threshold(self) -> dict[str, Any]:
        """RUN/threshold.json (thresholds.ensure_run_threshold: computed and recorded first for runs without one)."""
        return ensure_run_threshold(self.path, predictor=self.predictor())

    def smoothing_sigma(self) -> float:
        """The run's protocol smoothing (pixels), as its metrics were computed with."""
        settings = self.metrics().get("settings", {}) if (self.path / "metrics.json").is_file() else {}
        if "smoothing_sigma" in settings:
            return float(settings["smoothing_sigma"])
        return float(self.config().get("score", {}).get("smoothing_sigma", 0.0))

    @st.cache_data(show_spinner=False, max_entries=64)
    def target_frame(self, threshold: float):
        """targets.target_table of the run's target images at `threshold` (outcome and short name per image)."""
        return targets.target_table(self.target_outputs().rows, threshold)

    # -- stored images ------------------------------------------------------------------------------

    def mask(self, which: Store, index: int) -> np.ndarray:
        """Ground-truth mask `[S, S]` bool of image `index` of the store."""
        return self.store(which).masks([index])[0].numpy() > 0.5

    @st.cache_data(show_spinner=False, max_entries=16)
    def store_images(self, which: Store) -> list[dict[str, Any]]:
        """The image records (image_path, category, defect, label) of the store."""
        return self.store(which).images

    @st.cache_data(show_spinner=False, max_entries=128)
    def patch_map(self, which: Store, index: int) -> tuple[np.ndarray, float]:
        """(patch probabilities `[h, w]`, image score) of image `index` of the store, scored by the run's
        Scorer from the stored tokens (auxiliary images have no stored maps)."""
        store = self.store(which)
        probs, _, scores = self.predictor().scorer(store.tokens([index]), store.cls([index]))
        return probs[0].reshape(store.grid).numpy(), float(scores[0])

    # -- attribution and regions ------------------------------------------------------------------------

    @st.cache_resource(show_spinner=False, max_entries=64)
    def attribution(self, which: Store, index: int):
        """(tokens `[1, N, D]`, atoms.Attribution) of image `index` of the store: computed once per image,
        so moving a region over it only averages (region -> atoms)."""
        pred = self.predictor()
        tokens = self.store(which).tokens([index])
        return tokens, attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)

    @st.cache_data(show_spinner=False, max_entries=256)
    def patch_contributions(self, which: Store, index: int, patch: int, k: int = 6):
        """attribution.patch_contributions of one patch of image `index` (tagged)."""
        attr = self.attribution(which, index)[1]
        return attribution.patch_contributions(attr, patch, k=k, tags=self.atom_tags())

    def atom_tags(self) -> dict[int, str]:
        """{atom: tag} from the run's atom statistics, or {} when the run has no atom index. A flagged
        atom's tag carries its mark ('shared ⚑ border', atoms.flags.flag_mark), so every table shows it."""
        try:
            _, stats = self.atoms()
        except (SPGError, ImportError):
            return {}
        if stats is None or "tag" not in getattr(stats, "columns", []):
            return {}
        ids = stats["atom"] if "atom" in stats.columns else stats.index
        flags = stats["flags"] if "flags" in stats.columns else [""] * len(stats)
        labels = stats["labels"] if "labels" in stats.columns else [""] * len(stats)
        return {int(a): str(t) + flag_mark(f, lab) for a, t, f, lab in zip(ids, stats["tag"], flags, labels)}

    @st.cache_data(show_spinner=False, max_entries=16)
    def atom_ranking(self) -> dict[str, list[dict[str, Any]]]:
        """Both guides' active atoms, largest coefficient first (atoms.rank_atoms)."""
        return rank_atoms(self.predictor().guides)

    @st.cache_resource(show_spinner=False, max_entries=64)
    def image_atoms(self, which: Store, index: int):
        """atoms.region.ImageAtoms (SAE codes and net contributions) of image `index` of the store: once per
        image, so a new region costs two masked means."""
        tokens, attr = self.attribution(which, index)
        return image_atoms(self.predictor().sae, tokens[0], attr)

    @st.cache_data(show_spinner=False, max_entries=256)
    def region_atoms(self, which: Store, index: int, rows: tuple[int, int], cols: tuple[int, int], k: int = 8):
        """atoms.region.RegionAtoms for grid cells rows x cols of image `index` of the store."""
        grid = self.store(which).grid
        return rank_region(self.image_atoms(which, index), cell_patches(rows, cols, grid), k=k)

    # -- atoms ----------------------------------------------------------------------------------------

    @st.cache_resource(show_spinner="Measuring each guide atom inside each auxiliary defect kind ...", max_entries=8)
    def kind_map(self):
        """atoms.kinds.KindMap of the run's live guide atoms (cached in RUN/atoms/kinds.*)."""
        dead = {a for a, t in self.atom_tags().items() if t == "dead"}
        live = sorted({a["atom"] for g in self.atom_ranking().values() for a in g} - dead)
        return run_kind_map(self.path, self.predictor().sae, self.store(Store.AUX), live)

    @st.cache_resource(show_spinner="Finding the atom's patches in this defect kind ...", max_entries=64)
    def kind_tiles(self, atom: int, category: str, defect: str, count: int = 6) -> list[Tile]:
        """The atom's strongest in-mask patches among auxiliary images of one defect kind, as crops."""
        store = self.store(Store.AUX)
        found = kind_patches(self.predictor().sae, store, atom, (category, defect), count)
        size = store.image_size
        tiles = []
        for e in found:
            record = store.images[e["image"]]
            crop = png_bytes(
                patch_crop(load_image(record["image_path"]), e["patch"], store.grid, size, 2, 150, outline=IN_MASK)
            )
            tiles.append(Tile(crop, crop, f"{record['category']} · {record['defect']} · s={e['value']:.2f}"))
        return tiles

    @st.cache_resource(show_spinner="Drawing the atom's top patches ...", max_entries=64)
    def atom_tiles(self, atom: int, count: int) -> list[Tile]:
        index, _ = self.atoms()
        store = self.store(Store.AUX)
        tiles = atom_detail.atom_tiles(index, store.images, self.predictor().sae, store, atom, count=count)
        return [Tile(png_bytes(t.crop), png_bytes(t.heat), t.caption) for t in tiles]

    @st.cache_data(show_spinner="Encoding auxiliary images ...", max_entries=64)
    def atom_activations(self, atom: int) -> tuple[np.ndarray, int]:
        """(the atom's activations where it fires, number of auxiliary images encoded)."""
        index, _ = self.atoms()
        top_images = [e["image"] for e in index.entries(atom)]
        return atom_detail.atom_activation_sample(self.predictor().sae, self.store(Store.AUX), atom, include=top_images)

    @st.cache_resource(show_spinner="Preparing what-if ablations (projecting target tokens) ...", max_entries=4)
    def ablator(self) -> Ablator:
        """An atoms.Ablator over the run's target tokens (one per run, shared by every session)."""
        return Ablator(self.predictor(), store=self.store(Store.TARGET))

    @st.cache_resource(show_spinner="Recomputing maps and metrics without the atom ...", max_entries=64)
    def ablation(self, atom: int | None, guide: str):
        """AblationResult with `atom` removed from `guide` (None: the unedited baseline)."""
        tool = self.ablator()
        return tool.baseline() if atom is None else tool.ablate(remove=[atom], guide=guide)
