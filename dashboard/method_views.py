"""Cached loaders for the atom-space context (spg_core/context.py) and the Methods page
(spg_core/methods.py): the engine computes, these only cache its answers per run signature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import state
from spg_core.context import region_context
from spg_core.methods import METHODS, METRICS

DEFAULT_WEIGHT = 4.0  # the page's starting weight when the run records none (not a selected setting)


def context_setting(path: str, sig: tuple[float, ...]) -> tuple[str, float] | None:
    """(form, weight) the run recorded for its context (`spg run --context`), or None."""
    score = state.run_config(path, sig).get("score", {})
    weight = score.get("context_weight")
    return None if weight is None else (str(score.get("context_form", "logit")), float(weight))


@st.cache_data(show_spinner=False, max_entries=256)
def stored_region_context(
    path: str, sig: tuple[float, ...], which: str, index: int, rows: tuple[int, int], cols: tuple[int, int], k: int = 6
) -> dict[str, Any]:
    """context.region_context of grid cells rows x cols of image `index` of the run's 'target_store'
    or 'aux_store' (the image's SAE codes come from the region panel's cached ImageAtoms)."""
    from spg_core.atoms.region import cell_patches

    grid = state.store_of(Path(path), which).grid
    codes = state.stored_image_atoms(path, sig, which, index).codes
    return region_context(codes, grid, cell_patches(rows, cols, grid), k=k)


def patch_context(path: str, sig: tuple[float, ...], index: int, patch: int, k: int = 3) -> dict[str, Any]:
    """context.region_context of one patch of target image `index`."""
    grid = state.store_of(Path(path), "target_store").grid
    cell = divmod(int(patch), grid[1])
    return stored_region_context(path, sig, "target_store", index, (cell[0], cell[0]), (cell[1], cell[1]), k)


def context_frame(found: dict[str, Any]) -> pd.DataFrame:
    """region_context's atoms as a display table."""
    return pd.DataFrame(found["atoms"], columns=["atom", "share", "elsewhere", "words"])


@st.cache_resource(show_spinner="Scoring this image three ways ...", max_entries=64)
def method_maps(path: str, sig: tuple[float, ...], index: int, form: str, weight: float) -> dict[str, np.ndarray]:
    """{method: map `[S, S]`} of target image `index`: SPG, SPG + context, self-nn."""
    from spg_core.methods import image_method_maps

    store = state.store_of(Path(path), "target_store")
    maps = image_method_maps(state.predictor(path, sig), store, index, form, weight)
    return {name: m.numpy() for name, m in maps.items()}


@st.cache_data(show_spinner="Scoring the whole target set three ways (a minute on a CPU) ...", max_entries=16)
def method_metrics(path: str, sig: tuple[float, ...], form: str, weight: float) -> pd.DataFrame:
    """Mean metrics of SPG, SPG + context and self-nn on the run's target set, one row per method."""
    from spg_core.methods import compare_methods

    found = compare_methods(path, form, weight)
    return pd.DataFrame([{"method": m, **{k: found[m]["mean"].get(k) for k in METRICS}} for m in METHODS])
