"""Anomaly maps: browse target images, their maps and masks, errors at a threshold, and one patch's atoms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import nav, state, widgets
from dashboard.viewmodels.targets import OUTCOME_FILTERS, filter_targets, format_score, patch_at, peak_patch, target_table, threshold_range
from dashboard.viewmodels.attribution import patch_contributions
from spg_core.thresholds import best_f1_threshold
from spg_core.atoms import patch_crop
from spg_core.runs import PATCH_MAPS, SCORES

run = widgets.require_run()
widgets.page_header("Anomaly maps", "Target images with their anomaly maps; click a patch to see which atoms "
                                    "drive it", run)
health = widgets.run_health(run)
widgets.require(health, [PATCH_MAPS, SCORES], "Browsing anomaly maps")
sig = state.signature(run)
key = f"{run.name}::"       # per-run widget keys: another run has other images and scores


def choose_images(frame: pd.DataFrame) -> pd.DataFrame:
    """Category, defect type and outcome filters; returns the matching rows."""
    c1, c2, c3 = st.columns([1, 1, 1.3])
    categories = ["all"] + sorted(frame["category"].unique())
    category = c1.selectbox("Category", categories, key=key + "category")
    in_cat = frame if category == "all" else frame[frame["category"] == category]
    defect = c2.selectbox("Defect type", ["all"] + sorted(in_cat["defect"].unique()), key=key + "defect")
    kind = c3.selectbox("Show", list(OUTCOME_FILTERS), key=key + "outcome")
    return filter_targets(frame, None if category == "all" else category,
                                None if defect == "all" else defect, OUTCOME_FILTERS.get(kind or "all images"))


def image_picker(rows: pd.DataFrame) -> int:
    """Select one image of `rows` (keeps the choice while it stays in the filtered list)."""
    options = rows["index"].tolist()
    widgets.keep_choice(key + "image", options)
    labels = {int(i): f"{n}  ·  score {format_score(s)}  ·  {o}"
              for i, n, s, o in zip(rows["index"], rows["name"], rows["score"], rows["outcome"])}
    return int(st.selectbox(f"Image ({len(options)} shown)", options, key=key + "image",
                            format_func=lambda i: labels.get(i, str(i))))


def sync_patch(index: int, probs: np.ndarray) -> None:
    """A newly opened image starts on its most anomalous patch."""
    if st.session_state.get(key + "patch_of") != index:
        r, c = peak_patch(probs, probs.shape)
        st.session_state[key + "row"], st.session_state[key + "col"] = r, c
        st.session_state[key + "patch_of"] = index


def on_map_click() -> None:
    """Plotly click on a patch -> the row/col sliders (runs before the rerun renders them)."""
    point = widgets.selected_point(st.session_state.get(key + "map"))
    if point is not None:
        st.session_state[key + "row"], st.session_state[key + "col"] = point


def image_panel(image: np.ndarray, mask: np.ndarray, info: dict[str, Any], threshold: float) -> None:
    label = "anomalous" if info["label"] else "normal"
    verdict = f"{info['outcome']} at {format_score(threshold)}"
    st.markdown(f"**Image and ground truth** {widgets.pill(label, label)} {widgets.pill(info['defect'])} "
                f"{widgets.pill(verdict, info['outcome'])}", unsafe_allow_html=True)
    st.image(widgets.image_with_mask(image, mask), width="stretch",
             caption=f"{info['name']}: ground truth outlined in white")
    st.metric("Image score", format_score(info["score"]), border=True,
              help="the image's anomaly score: its map pooled with the run's aggregation (max, mean or LSE)")


def patch_panel(image: np.ndarray, index: int, grid: tuple[int, int], size: int) -> None:
    """The selected patch: its crop, probability, and top contributing atoms."""
    h, w = grid
    st.markdown("**Selected patch**")
    s1, s2 = st.columns(2)
    r = s1.slider("Row", 0, h - 1, key=key + "row")
    c = s2.slider("Column", 0, w - 1, key=key + "col")
    patch = patch_at(r, c, grid)
    with widgets.guard("Atom contributions are not available for this run"):
        attr = state.target_attribution(str(run), sig, index)
        p = float(attr.probs[0, patch])
        crop_col, text_col = st.columns([1, 1.2], vertical_alignment="center")
        crop = patch_crop(Image.fromarray(image), patch, grid, size, context=2, out=150, outline=(255, 255, 255))
        crop_col.image(crop, width=140, caption=f"row {r}, column {c}")
        text_col.metric("Patch p(anomaly)", format_score(p), border=True)
        contrib = patch_contributions(attr, patch, k=6, tags=state.atom_tags(str(run), sig))
        if contrib.empty:
            st.info("No atom contributes to this patch.")
        else:
            st.plotly_chart(widgets.contribution_figure(contrib), key=key + "contrib", config={"displayModeBar": False})
            widgets.keep_choice(key + "open_atom", contrib["atom"].tolist())
            atom = st.selectbox("Open an atom", contrib["atom"].tolist(), key=key + "open_atom",
                                format_func=lambda a: f"#{a}")
            if st.button("Open atom detail", icon=":material/frame_inspect:", key=key + "open"):
                st.session_state[state.ATOM_KEY] = int(atom)
                nav.open_page("atom_detail.py")


def threshold_control(scores: list[float], labels: list[int]) -> float:
    """The decision threshold slider, spanning the run's scores, starting at the best-F1 threshold."""
    best = best_f1_threshold(scores, labels)
    lo, hi, step, fmt = threshold_range(scores)
    if not lo <= st.session_state.get(key + "threshold", -1.0) <= hi:
        st.session_state[key + "threshold"] = min(max(round(best / step) * step, lo), hi)
    return st.slider("Decision threshold on the image score", lo, hi, step=step, format=fmt, key=key + "threshold",
                     help=f"an image is called anomalous when its score is at least this; default: the best-F1 "
                          f"threshold ({format_score(best)})")


def outcome_pills(frame: pd.DataFrame) -> None:
    counts = frame["outcome"].value_counts()
    st.markdown(" ".join(widgets.pill(f"{k} {int(counts.get(k, 0))}", k) for k in ("TP", "FP", "FN", "TN")),
                unsafe_allow_html=True)


def map_panel(image: np.ndarray, mask: np.ndarray, probs: np.ndarray, opacity: float, outline: bool) -> None:
    """The clickable anomaly map, the selected patch boxed."""
    st.markdown("**Anomaly map** (click a patch)")
    background = widgets.image_with_mask(image, mask if outline else None)
    selected = (st.session_state[key + "row"], st.session_state[key + "col"])
    fig = widgets.patch_map_figure(background, probs, opacity=opacity, selected=selected, height=380)
    st.plotly_chart(fig, key=key + "map", on_select=on_map_click, selection_mode="points",
                    config={"displayModeBar": False})


def main() -> None:
    target = state.target_maps(str(run), sig)
    threshold = threshold_control([r["score"] for r in target.rows], [r["label"] for r in target.rows])
    frame = target_table(target.rows, threshold)
    outcome_pills(frame)
    rows = choose_images(frame)
    if rows.empty:
        st.info("No image matches these filters at this threshold.", icon=":material/filter_alt_off:")
        return
    pick_col, opacity_col, outline_col = st.columns([3, 1.2, 1], vertical_alignment="bottom")
    with pick_col:
        index = image_picker(rows)
    opacity = opacity_col.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key=key + "opacity")
    outline = outline_col.toggle("Ground truth on map", value=True, key=key + "outline")

    info = frame.set_index("index").loc[index].to_dict()
    image = state.image_at(info["image_path"], target.image_size)
    mask = state.target_mask(run, index)
    sync_patch(index, target.probs[index])
    left, middle, right = st.columns([1, 1.2, 1], gap="medium")
    with left:
        image_panel(image, mask, info, threshold)
    with middle:
        map_panel(image, mask, target.probs[index], opacity, outline)
    with right:
        patch_panel(image, index, target.grid, target.image_size)


with widgets.guard("The target maps of this run cannot be read"):
    main()
