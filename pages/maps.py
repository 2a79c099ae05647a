"""Anomaly maps: browse a run's target or auxiliary images, their maps and masks, errors at a threshold,
one patch's atoms and a region's atoms. One view serves both stores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import (
    atom_views,
    events,
    glossary,
    guards,
    method_views,
    nav,
    pills,
    region_panel,
    state,
    sticky,
    url_state,
)
from dashboard.charts import contribution_figure
from dashboard.map_figure import image_with_mask_png, patch_map_figure
from dashboard.page import run_page
from dashboard.run_view import RunView, Store
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

view, health = run_page(
    "Anomaly maps",
    "Target or auxiliary images with their anomaly maps; click a patch or drag a box to see which atoms drive it",
    needs=[PATCH_MAPS, SCORES],
    purpose="Browsing anomaly maps",
)
SOURCES = {"target set": Store.TARGET, "auxiliary set": Store.AUX}  # the Images-from choice
SOURCE_HELP = "target: the images the run was evaluated on; auxiliary: the labelled images its guides were fitted on"


def image_frame(view: RunView, which: Store, threshold: float | None) -> pd.DataFrame:
    """The store's images (index, image_path, category, defect, label, name; with score and outcome for
    the target set, whose scores are stored)."""
    if which is Store.TARGET:
        return view.target_frame(threshold)
    return image_table(view.store_images(which))


def choose_images(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Category, defect type and (where there are outcomes) outcome filters; returns the matching rows."""
    c1, c2, c3 = st.columns([1, 1, 1.3])
    categories = ["all"] + sorted(frame["category"].unique())
    category = c1.selectbox("Category", categories, key=sticky.keep(key + "category"))
    in_cat = frame if category == "all" else frame[frame["category"] == category]
    defects = ["all"] + sorted(in_cat["defect"].unique())
    guards.keep_choice(sticky.keep(key + "defect"), defects)
    defect = c2.selectbox("Defect type", defects, key=key + "defect")
    kind = c3.selectbox("Show", list(OUTCOME_FILTERS), key=sticky.keep(key + "outcome")) if "outcome" in frame else None
    return filter_targets(
        frame,
        None if category == "all" else category,
        None if defect == "all" else defect,
        OUTCOME_FILTERS.get(kind or "all images"),
    )


def first_image(rows: pd.DataFrame) -> int | None:
    """The image a view opens on: the most confident true positive (a defect the run finds, large enough
    to see) on the target set; the first defective image on the auxiliary set (what a region asks about)."""
    if "outcome" in rows:
        hits = rows[rows["outcome"] == "TP"]
        return int(hits.loc[hits["score"].idxmax(), "index"]) if not hits.empty else None
    defective = rows.loc[rows["label"] == 1, "index"]
    return int(defective.iloc[0]) if not defective.empty else None


def image_picker(rows: pd.DataFrame, key: str) -> int:
    """Select one image of `rows` (keeps the choice while it stays in the filtered list)."""
    options = rows["index"].tolist()
    if sticky.keep(key + "image") not in st.session_state and first_image(rows) is not None:
        sticky.put(key + "image", first_image(rows))
    guards.keep_choice(key + "image", options)
    if "outcome" in rows:
        labels = {
            int(i): f"{n}  ·  score {format_score(s)}  ·  {o}"
            for i, n, s, o in zip(rows["index"], rows["name"], rows["score"], rows["outcome"])
        }
    else:
        labels = {int(i): f"{n}  ·  #{i}" for i, n in zip(rows["index"], rows["name"])}
    return int(
        st.selectbox(
            f"Image ({len(options)} shown)", options, key=key + "image", format_func=lambda i: labels.get(i, str(i))
        )
    )


def sync_patch(key: str, index: int, probs: np.ndarray, grid: tuple[int, int]) -> None:
    """A newly opened image starts on its most anomalous patch, with a 3 x 3 region around it."""
    if st.session_state.get(key + "patch_of") != index:
        cell = peak_patch(probs, probs.shape)
        sticky.put(key + "row", cell[0])
        sticky.put(key + "col", cell[1])
        region_panel.set_region(key + "region::", region_panel.box_around(cell, grid))
        st.session_state[key + "patch_of"] = index


def on_map_select(key: str, grid: tuple[int, int]):
    """Plotly selection on the map -> state (runs before the rerun draws the sliders): a box of several
    cells becomes the region; a click (a point, or a one-cell box in drawing mode) selects that patch and
    centres a 3 x 3 region on it, on target and auxiliary images alike."""

    def callback() -> None:
        event = st.session_state.get(key + "map")
        box = events.selected_box(event)
        if box is not None and (box[0][0] != box[0][1] or box[1][0] != box[1][1]):
            region_panel.set_region(key + "region::", box)
            return
        cell = (box[0][0], box[1][0]) if box is not None else events.selected_point(event)
        if cell is not None:
            sticky.put(key + "row", cell[0])
            sticky.put(key + "col", cell[1])
            region_panel.set_region(key + "region::", region_panel.box_around(cell, grid))

    return callback


def image_panel(
    which: Store, image: np.ndarray, mask: np.ndarray, info: dict[str, Any], score: float, threshold
) -> None:
    label = "anomalous" if info["label"] else "normal"
    verdict = (
        "" if threshold is None else pills.pill(f"{info['outcome']} at {format_score(threshold)}", info["outcome"])
    )
    title = "Auxiliary image" if which is Store.AUX else "Image"
    st.markdown(
        f"**{title} and ground truth** {pills.pill(label, label)} {pills.pill(info['defect'])} {verdict}",
        unsafe_allow_html=True,
    )
    st.image(
        image_with_mask_png(image, mask),
        width="stretch",
        caption=f"{info['name']}: {'defect mask' if which is Store.AUX else 'ground truth'} outlined in green",
    )
    st.metric(
        "Image score",
        format_score(score),
        border=True,
        help=glossary.say("image score"),
    )


def patch_panel(key: str, which: Store, image: np.ndarray, index: int, grid: tuple[int, int], size: int) -> None:
    """The selected patch: its crop, probability, and top contributing atoms."""
    h, w = grid
    st.markdown("**Selected patch**")
    s1, s2 = st.columns(2)
    r = s1.slider("Row", 0, h - 1, key=sticky.keep(key + "row"))
    c = s2.slider("Column", 0, w - 1, key=sticky.keep(key + "col"))
    patch = patch_at(r, c, grid)
    with guards.guard("Atom contributions are not available for this run"):
        attr = view.attribution(which, index)[1]
        crop_col, text_col = st.columns([1, 1.2], vertical_alignment="center")
        crop = patch_crop(Image.fromarray(image), patch, grid, size, context=2, out=150, outline=(255, 255, 255))
        crop_col.image(crop, width=140, caption=f"row {r}, column {c}")
        text_col.metric(
            "Patch p(anomaly)", format_score(float(attr.probs[0, patch])), border=True, help=glossary.say("p(anomaly)")
        )
        contrib = view.patch_contributions(which, index, patch)
        if contrib.empty:
            st.info("No atom contributes to this patch.")
            return
        st.plotly_chart(contribution_figure(contrib), key=key + "contrib", config={"displayModeBar": False})
        atom_views.flag_note(dict(zip(contrib["atom"], contrib["tag"])), contrib["atom"])
        region_panel.context_note(method_views.patch_context(view, which, index, patch))
        guards.keep_choice(key + "open_atom", contrib["atom"].tolist())
        atom = st.selectbox(
            "Open an atom", contrib["atom"].tolist(), key=key + "open_atom", format_func=lambda a: f"#{a}"
        )
        if st.button("Open atom detail", icon=":material/frame_inspect:", key=key + "open"):
            nav.open_atom(view.name, atom)


def threshold_control(key: str, scores: list[float], labels: list[int], record: dict | None) -> float:
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
            "Default threshold from",
            list(rules),
            key=sticky.keep(key + "rule", next(iter(rules))),
            help=glossary.say("aux_fpr") + "; " + glossary.say("aux best F1"),
        ) or next(iter(rules))
        default = rules[rule]
    else:
        rule, default = "", oracle
    sticky.keep(key + "threshold")
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
        " ".join(pills.pill(f"{k} {int(counts.get(k, 0))}", k, glossary.say(k)) for k in ("TP", "FP", "FN", "TN")),
        unsafe_allow_html=True,
    )


def map_scale(key: str, record: dict | None):
    """The colour scale picked above the map: fitted to the run (default) or 0-1 probability."""
    choices = ["fitted to this run", "probability 0-1"] if record is not None else ["probability 0-1"]
    choice = (
        st.segmented_control(
            "Colour scale", choices, key=sticky.keep(key + "scale", choices[0]), help=glossary.say("fitted scale")
        )
        or choices[0]
    )
    return fitted_scale(record["pixel_scale"]) if choice.startswith("fitted") else PROBABILITY_SCALE


def map_panel(key: str, image, mask, probs, look: dict[str, Any], record: dict | None, region) -> None:
    """The clickable anomaly map: the selected patch boxed, the region dashed, thresholded contour in white."""
    st.markdown("**Anomaly map** (click a patch; switch on box drawing to drag a region)")
    contour = sigmoid(record["pixel_scale"]["vmax"]) if record is not None else 0.5
    drawing = st.toggle(
        "Drag draws a region box",
        key=sticky.keep(key + "box_mode", False),
        help="on: drag on the map to box a region; off: click a patch to select it and centre a region on it",
    )
    fig = patch_map_figure(
        image,
        probs,
        opacity=look["opacity"],
        scale=look["scale"],
        smoothing_sigma=look["sigma"],
        contour_level=contour,
        truth=mask if look["outline"] else None,
        selected=(st.session_state[key + "row"], st.session_state[key + "col"]),
        region=region,
        height=380,
        box_select=drawing,
    )
    st.plotly_chart(
        fig,
        key=key + "map",
        on_select=on_map_select(key, probs.shape),
        selection_mode=("points", "box"),
        config={"displayModeBar": False},
    )
    where = "the 99.9th percentile of auxiliary normal pixels" if record is not None else "p = 0.5"
    st.caption(
        f"{look['scale'].legend}. White outline: the map at or above {where} (p {contour:.2g}); green: ground "
        f"truth. Smoothing: the run's own (sigma {look['sigma']:g} px)."
    )


def image_view(which: Store) -> None:
    """The whole view for one store: filters, picker, image, map, patch, region -> atoms."""
    key = region_panel.maps_key(view.name, which)  # per run and store: another run has other images
    record = None
    with guards.guard("The auxiliary threshold cannot be computed for this run"):
        record = view.threshold()
    threshold = None
    if which is Store.TARGET:
        rows = view.target_outputs().rows
        threshold = threshold_control(key, [r["score"] for r in rows], [r["label"] for r in rows], record)
    frame = image_frame(view, which, threshold)
    if threshold is not None:
        outcome_pills(frame)
    follow_image_link(frame, key, which)
    shown = choose_images(frame, key)
    if shown.empty:
        st.info(
            "No image matches these filters. Choose 'all' in the filters or move the threshold.",
            icon=":material/filter_alt_off:",
        )
        return
    pick_col, scale_col, opacity_col, outline_col = st.columns([3, 1.6, 1.1, 1], vertical_alignment="bottom")
    with pick_col:
        index = image_picker(shown, key)
    with scale_col:
        scale = map_scale(key, record)
    look = {
        "scale": scale,
        "opacity": opacity_col.slider("Map opacity", 0.0, 1.0, step=0.05, key=sticky.keep(key + "opacity", 0.55)),
        "outline": outline_col.toggle("Ground truth on map", key=sticky.keep(key + "outline", True)),
        "sigma": view.smoothing_sigma(),
    }
    info = frame.set_index("index").loc[index].to_dict()
    store = view.store(which)
    image = state.image_at(info["image_path"], store.image_size)
    mask = view.mask(which, index)
    if which is Store.TARGET:
        target = view.target_outputs()
        probs, score = target.probs[index], float(info["score"])
    else:
        probs, score = view.patch_map(which, index)
    sync_patch(key, index, probs, store.grid)
    follow_cell_link(key, store.grid)
    left, middle, right = st.columns([1, 1.2, 1], gap="medium")
    with right:
        patch_panel(key, which, image, index, store.grid, store.image_size)
        st.markdown("**Region** (drag a box on the map, or set it here)")
        region = region_panel.region_sliders(
            key + "region::", store.grid, (st.session_state[key + "row"], st.session_state[key + "col"])
        )
    with left:
        image_panel(which, image, mask, info, score, threshold)
    with middle:
        map_panel(key, image, mask, probs, look, record, region)
    st.subheader("Region → atoms")
    region_panel.region_panel(
        key + "region::",
        view,
        lambda r, c: view.region_atoms(which, index, r, c),
        *region,
        context=lambda r, c: method_views.region_context_of(view, which, index, r, c),
    )
    url_state.write(
        {
            url_state.STORE: url_state.AUX if which is Store.AUX else None,
            url_state.IMAGE: url_state.image_name(info["image_path"], info["category"]),
            url_state.PATCH: url_state.format_patch((st.session_state[key + "row"], st.session_state[key + "col"])),
            url_state.REGION: url_state.format_region(region),
        }
    )


def follow_image_link(frame: pd.DataFrame, key: str, which: Store) -> None:
    """A link's `image=category/defect/file.png` opens that image, filters cleared; an unknown name is
    said, and the view stays on its current image."""
    name = url_state.incoming((url_state.IMAGE,)).get(url_state.IMAGE)
    if name is None:
        return
    names = {
        url_state.image_name(p, c): int(i) for p, c, i in zip(frame["image_path"], frame["category"], frame["index"])
    }
    if name not in names:
        st.warning(
            f"The link names image **{name}**, which is not among this run's {which.label} images: showing "
            "another one instead (names read `category/defect/file.png`).",
            icon=":material/link_off:",
        )
        return
    for widget, value in (("category", "all"), ("defect", "all"), ("outcome", "all images"), ("image", names[name])):
        sticky.put(key + widget, value)


def follow_cell_link(key: str, grid: tuple[int, int]) -> None:
    """A link's `patch=row,col` selects that patch and `region=r0-r1,c0-c1` sets the region; a value off
    the grid is said and left out."""
    link = url_state.incoming((url_state.PATCH, url_state.REGION))
    if url_state.PATCH in link:
        cell = url_state.parse_patch(link[url_state.PATCH], grid)
        if cell is None:
            st.warning(f"The link's patch `{link[url_state.PATCH]}` is not a cell of this {grid[0]} x {grid[1]} grid.")
        else:
            sticky.put(key + "row", cell[0])
            sticky.put(key + "col", cell[1])
            region_panel.set_region(key + "region::", region_panel.box_around(cell, grid))
    if url_state.REGION in link:
        box = url_state.parse_region(link[url_state.REGION], grid)
        if box is None:
            st.warning(
                f"The link's region `{link[url_state.REGION]}` is not a box inside this {grid[0]} x {grid[1]} grid."
            )
        else:
            region_panel.set_region(key + "region::", box)


def main() -> None:
    source_key = region_panel.source_key(view.name)
    link = url_state.incoming((url_state.STORE, url_state.IMAGE))
    if link:  # a link names its store (`store=aux`), or none for the target set
        sticky.put(
            source_key, "auxiliary set" if st.query_params.get(url_state.STORE) == url_state.AUX else "target set"
        )
    sticky.keep(source_key, "target set")  # (other pages may open the auxiliary view)
    source = st.segmented_control("Images from", list(SOURCES), key=source_key, help=SOURCE_HELP) or "target set"
    with guards.guard(f"The run's {source} cannot be opened"):
        image_view(SOURCES[source])


main()
