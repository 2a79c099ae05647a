"""Methods side by side: SPG, SPG + atom-space context and the zero-training self-nn on the same target
image, on the same colour scale, with each method's metrics on the whole target set."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import guards, method_views, state
from dashboard.map_figure import image_with_mask
from dashboard.page import run_page
from dashboard.run_view import Store
from spg_core.context import FORMS
from spg_core.methods import METHODS
from spg_core.render import overlay
from spg_core.runs import PATCH_MAPS_FILE as PATCH_MAPS

view, _ = run_page(
    "Methods side by side",
    "SPG, SPG + context (how unlike the rest of its image a patch is, in atom space) and self-nn "
    "(no training) on the same image and scale",
    needs=[PATCH_MAPS],
    purpose="Comparing methods",
)
key = f"{view.name}::methods::"
NOTES = {
    "SPG": "the run's guides alone",
    "SPG + context": "the guides with the atom-space context fused in",
    "self-nn": "each patch's distance to its nearest look-alike in the same image; no training",
}


def context_choice() -> tuple[str, float]:
    """The run's selected context setting, or a form and weight to try (said to be unselected)."""
    chosen = method_views.context_setting(view)
    if chosen is not None:
        st.caption(
            f"Context: **{chosen[0]}**, weight **{chosen[1]:g}**, as recorded in this run's config.json "
            "(chosen by `spg select` on the auxiliary set, or given with --context-weight)."
        )
        return chosen
    st.caption(
        "This run records no context setting (it was run without --context). Try one below; a weight "
        "picked here by looking at target images is not a selected setting and its figures flatter."
    )
    c1, c2 = st.columns(2)
    form = c1.selectbox("Fusion", FORMS, key=key + "form")
    top = 1.0 if form == "mix" else 32.0
    weight = c2.number_input(
        "Weight", 0.0, top, min(method_views.DEFAULT_WEIGHT, top / 2), step=0.25, key=key + "weight"
    )
    return str(form), float(weight)


def image_choice() -> int:
    """A target image, by its category, defect and file name."""
    images = view.store_images(Store.TARGET)
    labels = {
        i: f"{r['category']} · {r.get('defect') or 'good'} · {Path(r['image_path']).name}" for i, r in enumerate(images)
    }
    return int(st.selectbox("Target image", list(labels), format_func=labels.get, key=key + "image"))


form, weight = context_choice()
with guards.guard("This run's images cannot be scored three ways"):
    index = image_choice()
    store = view.store(Store.TARGET)
    image = state.image_at(store.images[index]["image_path"], store.image_size)
    shown = image_with_mask(image, view.mask(Store.TARGET, index))  # ground truth outlined in green
    maps = method_views.method_maps(view, index, form, weight)
    st.caption("All three maps on one colour scale, 0 (blue) to 1 (red); self-nn's distances above 1 are clipped.")
    for col, name in zip(st.columns(len(METHODS)), METHODS):
        m = maps[name]
        col.image(overlay(shown, m, alpha=0.55), width="stretch")
        col.caption(f"**{name}** · map max {m.max():.3f} · {NOTES[name]}")

st.subheader("On the whole target set")
if st.button("Score the target set three ways", key=key + "metrics", icon=":material/table_chart:"):
    st.session_state[key + "show"] = True
if st.session_state.get(key + "show"):
    with guards.guard("The methods' metrics cannot be computed"):
        frame = method_views.method_metrics(view, form, weight)
        st.dataframe(
            frame,
            hide_index=True,
            column_config={
                "image_auroc": st.column_config.NumberColumn("image AUROC", format="%.3f"),
                "image_ap": st.column_config.NumberColumn("image AP", format="%.3f"),
                "pixel_auroc": st.column_config.NumberColumn("pixel AUROC", format="%.3f"),
                "aupro": st.column_config.NumberColumn("AUPRO", format="%.3f"),
            },
        )
        st.caption(
            "Same target tokens, same map upsampling, image score and smoothing as the run; only the patch "
            "score differs. self-nn is the zero-training baseline: a method that does not beat it adds nothing."
        )
