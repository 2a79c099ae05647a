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

from spg_core.atoms.build import STATS_JSON, SUMMARIES, ensure_summaries
from spg_core.atoms.flags import FLAG_RULE, MARK, flag_mark
from spg_core.atoms.ranking import guide_cosines as cosines
from spg_core.atoms.visual import OUT_MASK, patch_crop
from spg_core.images import load_image

from . import state
from .encode import png_bytes
from .run_view import RunView, Store, Tile
from .viewmodels import atom_detail, dictionary

RUN_PARAM, ATOM_PARAM = "run", "atom"
SEEN_KEY = "atom_url_seen"  # the (run, atom) of the URL last applied, so a widget change is not undone


def _mtime(path: Path) -> float:
    return path.stat().st_mtime if path.is_file() else -1.0


@st.cache_resource(show_spinner="Building this run's per-atom summaries (first use; seconds) ...", max_entries=8)
def summaries(view: RunView):
    """atoms.summaries.AtomSummaries of the run (build.ensure_summaries: built when missing or stale)."""
    before = _mtime(view.path / STATS_JSON)
    out = ensure_summaries(view.path)
    if _mtime(view.path / STATS_JSON) != before:  # stats.json gained its flags: reload it everywhere
        RunView.atoms.clear()
    return out


def has_summaries(view: RunView) -> bool:
    return (view.path / SUMMARIES).is_file()


@st.cache_data(show_spinner=False, max_entries=16)
def dictionary_table(view: RunView):
    """viewmodels.dictionary.dictionary_table of the run (after its summaries, so the flags are there)."""
    summaries(view)
    _, stats = view.atoms()
    return dictionary.dictionary_table(stats, view.atom_ranking())


@st.cache_data(show_spinner=False, max_entries=16)
def guide_cosines(view: RunView) -> dict[str, np.ndarray]:
    """{guide: `[M]` cosine of each atom's decoder direction with the guide direction}."""
    pred = view.predictor()
    return {g: v.numpy() for g, v in cosines(pred.dictionary, pred.guides).items()}


@st.cache_resource(show_spinner=False, max_entries=256)
def sample_tiles(view: RunView, which: str, atom: int, group: int, count: int) -> list[Tile]:
    """Crops (PNG bytes) of the atom's sampled patches of one band `group` (or the top list, group -1)
    of the 'aux' or 'target' set, the cell boxed."""
    s = summaries(view).sets[which]
    entries = (s.top(atom) if group < 0 else s.samples(atom, group))[:count]
    store = view.store(Store.AUX if which == "aux" else Store.TARGET)
    size, grid = store.image_size, store.grid
    tiles = []
    for e in entries:
        record = store.images[e["image"]]
        crop = png_bytes(patch_crop(load_image(record["image_path"]), e["patch"], grid, size, 2, 120, outline=OUT_MASK))
        tiles.append(Tile(crop, crop, atom_detail.sample_caption(record, e["value"])))
    return tiles


@st.cache_resource(show_spinner="Recomputing maps and metrics ...", max_entries=64)
def steered(view: RunView, atom: int, guide: str, factor: float):
    """AblationResult with `atom`'s coefficient in `guide` scaled by `factor` (0: removed)."""
    return view.ablator().ablate(scale={atom: factor}, guide=guide)


@st.cache_resource(show_spinner="Recomputing maps and metrics without the flagged atoms ...", max_entries=16)
def dropped(view: RunView, atoms: tuple[int, ...], guides: str = "both"):
    """AblationResult with `atoms` removed from the anomaly guide (`guides` 'anomaly') or from both ('both')."""
    if guides == "anomaly":
        return view.ablator().ablate(remove=list(atoms), guide="anomaly")
    return view.ablator().drop(list(atoms))


def flag_text(flags: Any) -> str:
    return flag_mark(flags).strip()


def flag_note(labels: dict[int, str], shown: Iterable[int]) -> None:
    """Under a ranking or table: the flag rule, when one of the `shown` atoms carries the mark."""
    if any(MARK in labels.get(int(a), "") for a in shown):
        st.caption(f"{MARK} flagged as a likely artefact (auxiliary set only). {FLAG_RULE}")


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
