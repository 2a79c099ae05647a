"""Uploaded images scored by a run (Try an image): prediction and region -> atoms, cached on the file's bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from spg_core import uploads
from spg_core.atoms import attribute
from spg_core.atoms.region import cell_patches, image_atoms, rank_region

from .run_view import RunView
from .viewmodels import attribution


@dataclass
class Prediction:
    """One uploaded image scored by a run: the model's view, patch map, score, top atoms."""

    image: np.ndarray  # [S, S, 3] uint8, as the backbone saw it
    probs: np.ndarray  # [h, w] patch anomaly probabilities
    score: float
    tokens: Any  # [N, D] float32 tensor (for region queries)
    atoms: Any  # DataFrame from attribution.image_top_atoms (None without a dictionary)


@st.cache_data(show_spinner="Scoring the image ...", max_entries=64)
def predict_upload(view: RunView, name: str, data: bytes) -> Prediction:
    """Validate, decode and score an uploaded file (SPGError with the reason when it is refused)."""
    pred = view.predictor()
    image = uploads.decode_upload(name, data)
    out = pred.predict_images([image])
    grid, size = pred.scorer.grid, pred.backbone.image_size
    top = None
    if pred.sae is not None:
        attr = attribute(out["tokens"], pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
        top = attribution.image_top_atoms(attr, k=6, tags=view.atom_tags())
    picture = np.asarray(image.resize((size, size), Image.BICUBIC))
    return Prediction(picture, out["probs"][0].reshape(grid).numpy(), float(out["scores"][0]), out["tokens"][0], top)


@st.cache_resource(show_spinner=False, max_entries=32)
def upload_image_atoms(view: RunView, name: str, data: bytes):
    """atoms.region.ImageAtoms of an uploaded image (scored by `predict_upload`)."""
    pred = view.predictor()
    tokens = predict_upload(view, name, data).tokens[None]
    attr = attribute(tokens, pred.dictionary, pred.guides, tau=pred.cfg.guides.tau)
    return image_atoms(pred.sae, tokens[0], attr)


@st.cache_data(show_spinner=False, max_entries=256)
def upload_region_atoms(
    view: RunView, name: str, data: bytes, rows: tuple[int, int], cols: tuple[int, int], k: int = 8
):
    """atoms.region.RegionAtoms for grid cells rows x cols of an uploaded image."""
    grid = predict_upload(view, name, data).probs.shape
    return rank_region(upload_image_atoms(view, name, data), cell_patches(rows, cols, grid), k=k)
