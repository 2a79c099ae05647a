"""Anomaly maps: browse target images, their maps and masks, errors at a threshold, and one patch's atoms."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import method_views, nav, region_panel, state, widgets
from dashboard.viewmodels.targets import (
    OUTCOME_FILTERS,
    filter_targets,
    format_score,
    image_table,
    patch_at,
    peak_patch,
    threshold_range,
)
from spg_core.atoms import patch_crop
from spg_core.render import PROBABILITY_SCALE, fitted_scale, sigmoid
from spg_core.runs import PATCH_MAPS_FILE as PATCH_MAPS
from spg_core.runs import SCORES_FILE as SCORES
from spg_core.thresholds import best_f1_threshold

run = widgets.require_run()
widgets.page_header(
    "Anomaly maps",
    "Target or auxiliary images with their anomaly maps; click a patch or drag a box to see which atoms drive it",
    run,
)
health = widgets.run_health(run)
widgets.require(health, [PATCH_MAPS, SCORES], "Browsing anomaly maps")
sig = state.signature(run)
key, akey = region_panel.maps_keys(run.name)  # per-run widget keys: another run has other images


def choose_images(frame: pd.DataFrame) -> pd.DataFrame:
    """Category, defect type and outcome filters; returns the matching rows."""
    c1, c2, c3 = st.columns([1, 1, 1.3])
    categories = ["all"] + sorted(frame["category"].unique())
    category = c1.selectbox("Category", categories, key=key + "category")
    in_cat = frame if category == "all" else frame[frame["category"] == category]
    defect = c2.selectbox("Defect type", ["all"] + sorted(in_cat["defect"].unique()), key=key + "defect")
    kind = c3.selectbox("Show", list(OUTCOME_FILTERS), key=key + "outcome")
    return filter_targets(
        frame,
        None if category == "all" else category,
        None if defect == "all" else defect,
        OUTCOME_FILTERS.get(kind or "all images"),
    )


def image_picker(rows: pd.DataFrame) -> int:
    """Select one image of `rows` (keeps the choice while it stays in the filtered list)."""
    options = rows["index"].tolist()
    widgets.keep_choice(key + "image", options)
    labels = {
        int(i): f"{n}  ·  score {format_score(s)}  ·  {o}"
        for i, n, s, o in zip(rows["index"], rows["name"], rows["score"], rows["outcome"])
    }
    return int(
        st.selectbox(
            f"Image ({len(options)} shown)", options, key=key + "image", format_func=lambda i: labels.get(i, str(i))
        )
    )


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
    st.markdown(
        f"**Image and ground truth** {widgets.pill(label, label)} {widgets.pill(info['defect'])} "
        f"{widgets.pill(verdict, info['outcome'])}",
        unsafe_allow_html=True,
    )
    st.image(
        widgets.image_with_mask_png(image, mask),
        width="stretch",
        caption=f"{info['name']}: ground truth outlined in green",
    )
    st.metric(
        "Image score",
        format_score(info["score"]),
        border=True,
        help="the image's anomaly score: its map pooled with the run's aggregation (max, mean or LSE)",
    )


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
        contrib = state.patch_contributions(str(run), sig, index, patch)
        if contrib.empty:
            st.info("No atom contributes to this patch.")
        else:
            st.plotly_chart(widgets.contribution_figure(contrib), key=key + "contrib", config={"displayModeBar": False})
            widgets.keep_choice(key + "open_atom", contrib["atom"].tolist())
            atom = st.selectbox(
                "Open an atom", contrib["atom"].tolist(), key=key + "open_atom", format_func=lambda a: f"#{a}"
            )
            if st.button("Open atom detail", icon=":material/frame_inspect:", key=key + "open"):
                st.session_state[state.ATOM_KEY] = int(atom)
                nav.open_page("atom_detail.py")
    with widgets.guard("The atom-space context is not available for this run"):
        region_panel.context_note(method_views.patch_context(str(run), sig, index, patch))


def threshold_control(scores: list[float], labels: list[int], record: dict | None) -> float:
    """The decision threshold slider, starting at the threshold chosen on the auxiliary set (recorded
    in RUN/threshold.json); the target's own best-F1 threshold is shown only as an oracle."""
    oracle = best_f1_threshold(scores, labels)
    lo, hi, step, fmt = threshold_range(scores)
    rules = {}
    if record is not None:
        image = record["image"]
        if "aux_fpr" in image:  # the recorded default first
            rules[f"auxiliary {100 * image['aux_fpr']['fpr_target']:.0f}% FPR"] = image["aux_fpr"]["threshold"]
        rules["auxiliary best F1"] = image["aux_max_f1"]["threshold"]
    rule_col, slider_col = st.columns([1.2, 3], vertical_alignment="bottom")
    if rules:
        rule = rule_col.segmented_control(
            "Default threshold from", list(rules), default=next(iter(rules)), key=key + "rule"
        ) or next(iter(rules))
        default = rules[rule]
    else:
        rule, default = "", oracle
    if st.session_state.get(key + "rule_of") != rule:  # a new rule moves the slider to its value
        st.session_state[key + "threshold"] = min(max(round(default / step) * step, lo), hi)
        st.session_state[key + "rule_of"] = rule
    if not lo <= st.session_state.get(key + "threshold", -1.0) <= hi:
        st.session_state[key + "threshold"] = min(max(round(default / step) * step, lo), hi)
    threshold = slider_col.slider(
        "Decision threshold on the image score",
        lo,
        hi,
        step=step,
        format=fmt,
        key=key + "threshold",
        help="an image is called anomalous when its score is at least this",
    )
    if record is not None:
        image = record["image"]
        part = image["aux_max_f1"] if rule.endswith("F1") else image.get("aux_fpr", image["aux_max_f1"])
        st.caption(
            f"Default {format_score(default)}: chosen on the auxiliary set ({record['aux']}, "
            f"{record['aux_images']} images, none of them target images) by **{rule}**; there it gives "
            f"F1 {part['f1']:.2f} and flags {100 * part['fpr']:.0f}% of the good images. "
            f"Oracle line, for reference only: the target's own best-F1 threshold is {format_score(oracle)} "
            f"(it uses the target labels, so it flatters)."
        )
    else:
        st.caption(
            f"No auxiliary threshold for this run (its auxiliary token store is missing), so the slider "
            f"starts at the **oracle**: the target's own best-F1 threshold {format_score(oracle)}, "
            f"which uses the target labels. Re-run `spg run` to record one."
        )
    return threshold


def outcome_pills(frame: pd.DataFrame) -> None:
    counts = frame["outcome"].value_counts()
    st.markdown(
        " ".join(widgets.pill(f"{k} {int(counts.get(k, 0))}", k) for k in ("TP", "FP", "FN", "TN")),
        unsafe_allow_html=True,
    )


def map_scale(record: dict | None):
    """The colour scale picked above the map: fitted to the run (default) or 0-1 probability."""
    choices = ["fitted to this run", "probability 0-1"] if record is not None else ["probability 0-1"]
    choice = st.segmented_control("Colour scale", choices, default=choices[0], key=key + "scale") or choices[0]
    return fitted_scale(record["pixel_scale"]) if choice.startswith("fitted") else PROBABILITY_SCALE


def map_panel(
    image: np.ndarray,
    mask: np.ndarray,
    probs: np.ndarray,
    opacity: float,
    outline: bool,
    scale,
    record: dict | None,
    sigma: float,
    region,
) -> None:
    """The clickable anomaly map: the selected patch boxed, the region dashed, thresholded contour in white."""
    st.markdown("**Anomaly map** (click a patch; switch on box drawing to drag a region)")
    contour = sigmoid(record["pixel_scale"]["vmax"]) if record is not None else 0.5
    selected = (st.session_state[key + "row"], st.session_state[key + "col"])
    drawing = st.toggle(
        "Drag draws a region box",
        value=False,
        key=key + "box_mode",
        help="on: drag on the map to box a region; off: click a patch to select it",
    )
    fig = widgets.patch_map_figure(
        image,
        probs,
        opacity=opacity,
        scale=scale,
        smoothing_sigma=sigma,
        contour_level=contour,
        truth=mask if outline else None,
        selected=selected,
        region=region,
        height=380,
        box_select=drawing,
    )
    st.plotly_chart(
        fig,
        key=key + "map",
        on_select=on_map_select,
        selection_mode=("points", "box"),
        config={"displayModeBar": False},
    )
    where = "the 99.9th percentile of auxiliary normal pixels" if record is not None else "p = 0.5"
    st.caption(
        f"{scale.legend}. White outline: the map at or above {where} (p {contour:.2g}); green: ground "
        f"truth. Smoothing: the run's own (sigma {sigma:g} px)."
    )


def on_map_select() -> None:
    """A box drawn on the map sets the region; a click on a patch selects it."""
    event = st.session_state.get(key + "map")
    box = widgets.selected_box(event)
    if box is not None and (box[0][0] != box[0][1] or box[1][0] != box[1][1]):
        st.session_state[key + "region::rows"], st.session_state[key + "region::cols"] = box
        return
    if box is not None:  # in select mode a click arrives as a one-cell box: it picks that patch
        st.session_state[key + "row"], st.session_state[key + "col"] = box[0][0], box[1][0]
        return
    on_map_click()


def aux_images() -> None:
    """Auxiliary images (the set the guides were fitted on): map, defect mask and region -> atoms, so a
    region can be asked about on images with known defects the target set does not have."""
    store = state.store_of(run, "aux_store")
    frame = image_table(state.store_images(str(run), sig, "aux_store"))
    c1, c2 = st.columns(2)
    category = c1.selectbox("Category", ["all"] + sorted(frame["category"].unique()), key=akey + "category")
    in_cat = frame if category == "all" else frame[frame["category"] == category]
    defect = c2.selectbox("Defect type", ["all"] + sorted(in_cat["defect"].unique()), key=akey + "defect")
    rows = filter_targets(frame, None if category == "all" else category, None if defect == "all" else defect)
    options = rows["index"].tolist()
    defective = rows.loc[rows["label"] == 1, "index"].tolist()
    if akey + "image" not in st.session_state and defective:  # open on a defect: what a region asks about
        st.session_state[akey + "image"] = defective[0]
    widgets.keep_choice(akey + "image", options)
    names = dict(zip(frame["index"], frame["name"]))
    pick_col, scale_col, opacity_col = st.columns([3, 1.6, 1.1], vertical_alignment="bottom")
    index = int(
        pick_col.selectbox(
            f"Auxiliary image ({len(options)} shown)",
            options,
            key=akey + "image",
            format_func=lambda i: f"{names.get(i, i)}  ·  #{i}",
        )
    )
    record = None
    with widgets.guard("The run's fitted colour scale cannot be computed"):
        record = state.run_threshold(str(run), sig)
    with scale_col:
        scale = map_scale(record)
    opacity = opacity_col.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key=akey + "opacity")

    info = frame.set_index("index").loc[index].to_dict()
    image = state.image_at(info["image_path"], store.image_size)
    mask = state.stored_mask(run, "aux_store", index)
    probs, score = state.stored_patch_map(str(run), sig, "aux_store", index)
    if st.session_state.get(akey + "region_of") != index:
        region_panel.reset_region(akey + "region::")
        st.session_state[akey + "region_of"] = index
    region = region_panel.current_region(akey + "region::", store.grid, peak_patch(probs, probs.shape))
    sigma = state.smoothing_sigma(str(run), sig)
    contour = sigmoid(record["pixel_scale"]["vmax"]) if record is not None else 0.5
    left, middle, right = st.columns([1, 1.2, 1], gap="medium")
    with left:
        label = "anomalous" if info["label"] else "normal"
        st.markdown(
            f"**Auxiliary image and ground truth** {widgets.pill(label, label)} {widgets.pill(info['defect'])}",
            unsafe_allow_html=True,
        )
        st.image(
            widgets.image_with_mask_png(image, mask),
            width="stretch",
            caption=f"{info['name']}: defect mask outlined in green",
        )
        st.metric(
            "Image score",
            format_score(score),
            border=True,
            help="scored now from the stored auxiliary tokens with the run's guides and aggregation",
        )
    with middle:
        st.markdown("**Anomaly map** (click a patch to centre a region on it; switch on box drawing to drag one)")
        drawing = st.toggle(
            "Drag draws a region box",
            value=False,
            key=akey + "box_mode",
            help="on: drag on the map to box a region; off: a click centres a 3 x 3 region",
        )
        fig = widgets.patch_map_figure(
            image,
            probs,
            opacity=opacity,
            scale=scale,
            smoothing_sigma=sigma,
            contour_level=contour,
            truth=mask,
            region=region,
            height=380,
            box_select=drawing,
        )
        st.plotly_chart(
            fig,
            key=akey + "map",
            selection_mode=("points", "box"),
            config={"displayModeBar": False},
            on_select=region_panel.on_region_select(akey + "region::", akey + "map", store.grid),
        )
        st.caption(f"{scale.legend}. White outline: p {contour:.2g}; green: the defect mask.")
    with right:
        st.markdown("**Region** (drag a box on the map, or set it here)")
        region = region_panel.region_sliders(akey + "region::", store.grid, peak_patch(probs, probs.shape))
    st.subheader("Region → atoms")
    region_panel.region_panel(
        akey + "region::",
        str(run),
        sig,
        lambda r, c: state.stored_region_atoms(str(run), sig, "aux_store", index, r, c),
        *region,
        context=lambda r, c: method_views.stored_region_context(str(run), sig, "aux_store", index, r, c),
    )


SOURCES = ("target set", "auxiliary set")  # the Images-from choice: the run's target or auxiliary store


def main() -> None:
    st.session_state.setdefault(key + "source", "target set")  # (other pages may open the auxiliary view)
    source = (
        st.segmented_control(
            "Images from",
            SOURCES,
            key=key + "source",
            help="target: the images the run was evaluated on; auxiliary: the labelled "
            "images its guides were fitted on",
        )
        or "target set"
    )
    if source == "auxiliary set":
        with widgets.guard("The run's auxiliary images cannot be opened"):
            aux_images()
        return
    target = state.target_outputs(str(run), sig)
    record = None
    with widgets.guard("The auxiliary threshold cannot be computed for this run"):
        record = state.run_threshold(str(run), sig)
    threshold = threshold_control([r["score"] for r in target.rows], [r["label"] for r in target.rows], record)
    frame = state.target_frame(str(run), sig, threshold)
    outcome_pills(frame)
    rows = choose_images(frame)
    if rows.empty:
        st.info(
            "No image matches these filters at this threshold. Choose 'all' in the filters or move the threshold.",
            icon=":material/filter_alt_off:",
        )
        return
    pick_col, scale_col, opacity_col, outline_col = st.columns([3, 1.6, 1.1, 1], vertical_alignment="bottom")
    with pick_col:
        index = image_picker(rows)
    with scale_col:
        scale = map_scale(record)
    opacity = opacity_col.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key=key + "opacity")
    outline = outline_col.toggle("Ground truth on map", value=True, key=key + "outline")

    info = frame.set_index("index").loc[index].to_dict()
    image = state.image_at(info["image_path"], target.image_size)
    mask = state.target_mask(run, index)
    if st.session_state.get(key + "patch_of") != index:
        region_panel.reset_region(key + "region::")
    sync_patch(index, target.probs[index])
    sigma = state.smoothing_sigma(str(run), sig)
    left, middle, right = st.columns([1, 1.2, 1], gap="medium")
    with right:
        patch_panel(image, index, target.grid, target.image_size)
        st.markdown("**Region** (drag a box on the map, or set it here)")
        region = region_panel.region_sliders(
            key + "region::", target.grid, (st.session_state[key + "row"], st.session_state[key + "col"])
        )
    with left:
        image_panel(image, mask, info, threshold)
    with middle:
        map_panel(image, mask, target.probs[index], opacity, outline, scale, record, sigma, region)
    st.subheader("Region → atoms")
    region_panel.region_panel(
        key + "region::",
        str(run),
        sig,
        lambda r, c: state.stored_region_atoms(str(run), sig, "target_store", index, r, c),
        *region,
        context=lambda r, c: method_views.stored_region_context(str(run), sig, "target_store", index, r, c),
    )


with widgets.guard("The target maps of this run cannot be read"):
    main()
