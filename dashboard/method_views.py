"""Cached loaders for the atom-space context (spg_core/context.py) and the Methods page
(spg_core/methods.py): the engine computes, these only cache its answers per RunView (run and
artifact signature)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from spg_core.atoms.region import cell_patches
from spg_core.context import region_context
from spg_core.methods import METHODS, METRICS, compare_methods, image_method_maps

from .run_view import RunView, Store

DEFAULT_WEIGHT = 4.0  # the page's starting weight when the run records none (not a selected setting)


def context_setting(view: RunView) -> tuple[str, float] | None:
    """(form, weight) the run recorded for its context (`spg run --context`), or None."""
    score = view.config().get("score", {})
    weight = score.get("context_weight")
    return None if weight is None else (str(score.get("context_form", "logit")), float(weight))


@st.cache_data(show_spinner=False, max_entries=256)
def region_context_of(
    view: RunView, which: Store, index: int, rows: tuple[int, int], cols: tuple[int, int], k: int = 6
) -> dict[str, Any]:
    """context.region_context of grid cells rows x cols of image `index` of the store (the image's SAE
    codes come from the region panel's cached ImageAtoms)."""
    grid = view.store(which).grid
    return region_context(view.image_atoms(which, index).codes, grid, cell_patches(rows, cols, grid), k=k)


def patch_context(view: RunView, which: Store, index: int, patch: int, k: int = 3) -> dict[str, Any]:
    """context.region_context of one patch of image `index` of the store."""
    r, c = divmod(int(patch), view.store(which).grid[1])
    return region_context_of(view, which, index, (r, r), (c, c), k)


@st.cache_resource(show_spinner="Scoring this image three ways ...", max_entries=64)
def method_maps(view: RunView, index: int, form: str, weight: float) -> dict[str, np.ndarray]:
    """{method: map `[S, S]`} of target image `index`: SPG, SPG + context, self-nn."""
    maps = image_method_maps(view.predictor(), view.store(Store.TARGET), index, form, weight)
    return {name: m.numpy() for name, m in maps.items()}


@st.cache_data(show_spinner="Scoring the whole target set three ways (a minute on a CPU) ...", max_entries=16)
def method_metrics(view: RunView, form: str, weight: float) -> pd.DataFrame:
    """Mean metrics of SPG, SPG + context and self-nn on the run's target set, one row per method."""
    found = compare_methods(view.path, form, weight)
    return pd.DataFrame([{"method": m, **{k: found[m]["mean"].get(k) for k in METRICS}} for m in METHODS])
