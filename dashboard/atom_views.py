"""Cached loaders of the atom views (Dictionary, Atom detail): they read RUN/atoms/summaries.safetensors
(built on first use for runs made before it existed), never the token stores, except to draw a tile.

Also the URL contract of Atom detail: `/atom?run=RUN&atom=ID` opens that atom of that run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from spg_core.atoms.build import STATS_JSON, SUMMARIES
from spg_core.atoms.flags import FLAG_RULE, MARK, flag_mark

from . import state
from .viewmodels import atom_detail, dictionary

RUN_PARAM, ATOM_PARAM = "run", "atom"
SEEN_KEY = "atom_url_seen"  # the (run, atom) of the URL last applied, so a widget change is not undone


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else -1.0


@st.cache_resource(show_spinner="Building this run's per-atom summaries (first use; seconds) ...", max_entries=8)
def summaries(path: str, sig: tuple[float, ...]):
    """atoms.summaries.AtomSummaries of the run (build.ensure_summaries: built when missing or stale)."""
    from spg_core.atoms.build import ensure_summaries

    before = _mtime(Path(path) / STATS_JSON)
    out = ensure_summaries(path)
    if _mtime(Path(path) / STATS_JSON) != before:  # stats.json gained its flags: reload it everywhere
        state.atoms.clear()
    return out


def has_summaries(path: str) -> bool:
    return (Path(path) / SUMMARIES).is_file()


def labels(path: str, sig: tuple[float, ...]) -> dict[int, str]:
    """{atom: tag with its flag mark}, e.g. 'shared ⚑ border' (state.atom_tags, which carries the marks)."""
    return state.atom_tags(path, sig)


@st.cache_data(show_spinner=False, max_entries=16)
def dictionary_table(path: str, sig: tuple[float, ...]):
    """viewmodels.dictionary.dictionary_table of the run (after its summaries, so the flags are there)."""
    summaries(path, sig)
    _, stats = state.atoms(path, sig)
    return dictionary.dictionary_table(stats, state.atom_ranking(path, sig))


@st.cache_data(show_spinner=False, max_entries=16)
def guide_cosines(path: str, sig: tuple[float, ...]) -> dict[str, np.ndarray]:
    """{guide: `[M]` cosine of each atom's decoder direction with the guide direction}."""
    from spg_core.atoms.ranking import guide_cosines as cosines

    pred = state.predictor(path, sig)
    return {g: v.numpy() for g, v in cosines(pred.dictionary, pred.guides).items()}


@st.cache_resource(show_spinner=False, max_entries=256)
def sample_tiles(path: str, sig: tuple[float, ...], which: str, atom: int, group: int, count: int) -> list[state.Tile]:
    """Crops (PNG bytes) of the atom's sampled patches of one band `group` (or the top list, group -1)
    of the 'aux' or 'target' set, the cell boxed."""
    from spg_core.atoms.visual import OUT_MASK, patch_crop

    s = summaries(path, sig).sets[which]
    entries = (s.top(atom) if group < 0 else s.samples(atom, group))[:count]
    store = state.store_of(Path(path), "aux_store" if which == "aux" else "target_store")
    size, grid = store.image_size, store.grid
    tiles = []
    for e in entries:
        record = store.images[e["image"]]
        view = Image.fromarray(state.image_at(record["image_path"], size))
        crop = state.png(patch_crop(view, e["patch"], grid, size, 2, 120, outline=OUT_MASK))
        tiles.append(state.Tile(crop, crop, atom_detail.sample_caption(record, e["value"])))
    return tiles


@st.cache_resource(show_spinner="Recomputing maps and metrics ...", max_entries=64)
def steered(path: str, sig: tuple[float, ...], atom: int, guide: str, factor: float):
    """AblationResult with `atom`'s coefficient in `guide` scaled by `factor` (0: removed)."""
    return state.ablator(path, sig).ablate(scale={atom: factor}, guide=guide)


@st.cache_resource(show_spinner="Recomputing maps and metrics without the flagged atoms ...", max_entries=16)
def dropped(path: str, sig: tuple[float, ...], atoms: tuple[int, ...]):
    """AblationResult with `atoms` removed from both guides."""
    return state.ablator(path, sig).drop(list(atoms))


def flag_text(flags: Any) -> str:
    return flag_mark(flags).strip()


# -- URL -------------------------------------------------------------------------------------------


def apply_run_param() -> str | None:
    """Choose the run named by `?run=` when it is a run of the root (then rerun so the sidebar follows).
    Returns a message when the URL names an unknown run (the page stays on the chosen one)."""
    wanted = st.query_params.get(RUN_PARAM)
    seen = st.session_state.get(SEEN_KEY, (None, None))
    if not wanted or wanted == seen[0]:
        return None
    st.session_state[SEEN_KEY] = (wanted, seen[1])
    names = state.run_names(str(state.runs_root()))
    if wanted not in names:
        current = st.session_state.get(state.RUN_KEY)
        return f"The link names run `{wanted}`, which is not under the runs root; showing `{current}` instead."
    if st.session_state.get(state.RUN_KEY) != wanted:
        st.session_state[state.RUN_KEY] = wanted
        st.rerun()
    return None


def apply_atom_param(width: int) -> str | None:
    """Open the atom named by `?atom=` (an id in [0, width)); a message when it is not one."""
    raw = st.query_params.get(ATOM_PARAM)
    seen = st.session_state.get(SEEN_KEY, (None, None))
    if raw is None or raw == seen[1]:
        return None
    st.session_state[SEEN_KEY] = (seen[0], raw)
    text = raw.strip().lstrip("#")
    if not text.isdigit() or not 0 <= int(text) < width:
        return (
            f"The link asks for atom `{raw}`, but this run's atoms are #0 to #{width - 1}; "
            "showing the top anomaly atom."
        )
    st.session_state[state.ATOM_KEY] = int(text)
    return None


def write_params(run: str, atom: int) -> None:
    """Put the open view in the URL (so it can be sent as a link), and remember it as applied."""
    if st.query_params.get(RUN_PARAM) != run or st.query_params.get(ATOM_PARAM) != str(atom):
        st.query_params[RUN_PARAM] = run
        st.query_params[ATOM_PARAM] = str(atom)
    st.session_state[SEEN_KEY] = (run, str(atom))


def flag_note(labels: dict[int, str], shown: Iterable[int]) -> None:
    """Under a ranking or table: the flag rule, when one of the `shown` atoms carries the mark."""
    if any(MARK in labels.get(int(a), "") for a in shown):
        st.caption(f"{MARK} flagged as a likely artefact (auxiliary set only). {FLAG_RULE}")
