"""Backbones: two to four runs side by side on one target image, and their per-category metrics."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import state, widgets
from spg_core import views
from spg_core.report import METRIC_TITLES
from spg_core.runs import METRICS, PATCH_MAPS, SCORES

root = state.runs_root()
widgets.page_header("Backbones", "Compare runs (e.g. the same experiment with different backbones) on the same "
                                 "target image and per category")
names = state.run_names(str(root))
if not names:
    widgets.empty_state(root)
    st.stop()
if len(names) < 2:
    st.info("Comparing needs at least two runs under the runs root; there is one. Make another, e.g. "
            "`spg run --aux synthetic-a --target synthetic-b --backbone dinov2-large-tiny --out runs/other`.",
            icon=":material/info:")
    st.stop()


def default_selection() -> list[str]:
    """The sidebar's run first, then the newest others (up to 3 runs)."""
    current = st.session_state.get(state.RUN_KEY)
    first = [current] if current in names else []
    return (first + [n for n in names if n != current])[:3]


def backbone_of(run: Path) -> str:
    try:
        return str(state.run_config(str(run), state.signature(run)).get("backbone", "?"))
    except Exception:        # a damaged config is reported in the run's own column
        return "?"


chosen = st.multiselect("Runs to compare (2 to 4)", names, default=default_selection(), max_selections=4,
                        key="bb_runs")
if len(chosen) < 2:
    st.info("Choose at least two runs.", icon=":material/info:")
    st.stop()
runs = {name: views.resolve_run(root, name) for name in chosen}

# Only runs whose target outputs load take part in the image comparison; the others say why.
tables, broken = {}, {}
for name, run in runs.items():
    health = views.check_run(run)
    if not health.has(PATCH_MAPS, SCORES):
        broken[name] = f"its {', '.join(health.missing(PATCH_MAPS, SCORES))} missing or damaged"
        continue
    try:
        tables[name] = state.target_maps(str(run), state.signature(run)).rows
    except Exception as exc:    # damaged maps: report, keep comparing the rest
        broken[name] = str(exc).splitlines()[0]
for name, why in broken.items():
    st.warning(f"Run **{name}** is left out of the image comparison: {why}.", icon=":material/construction:")

st.subheader("Same image, every run")
common = views.common_targets(tables)
if common.empty:
    st.info("These runs share no target image, so there is nothing to show side by side.", icon=":material/info:")
else:
    c1, c2, c3 = st.columns([1, 2, 1])
    category = c1.selectbox("Category", sorted(common["category"].unique()), key="bb_category")
    in_cat = common[common["category"] == category].set_index("image_path", drop=False)
    labels = {p: f"{n}  ·  {d}" for p, n, d in zip(in_cat["image_path"], in_cat["name"], in_cat["defect"])}
    widgets.keep_choice("bb_image", list(labels))
    pick = c2.selectbox("Image", list(labels), key="bb_image", format_func=lambda p: labels.get(p, p))
    opacity = c3.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key="bb_opacity")
    row = in_cat.loc[pick]
    cols = st.columns(len(tables))
    for col, name in zip(cols, tables):
        run = runs[name]
        with col, widgets.guard(f"Run {name} cannot be shown"):
            target = state.target_maps(str(run), state.signature(run))
            index = int(row[name])
            image = state.image_at(row["image_path"], target.image_size)
            mask = state.target_mask(run, index)
            score = target.rows[index]["score"]
            fig = widgets.patch_map_figure(widgets.image_with_mask(image, mask), target.probs[index],
                                           opacity=opacity, title=f"{backbone_of(run)}", height=360,
                                           colorbar=col is cols[-1])
            st.plotly_chart(fig, key=f"bb_map_{name}", config={"displayModeBar": False})
            st.metric(name, f"score {views.format_score(score)}", border=True)

st.subheader("Per-category metrics")
frames = {}
for name, run in runs.items():
    with widgets.guard(f"The metrics of run {name} cannot be read"):
        if views.check_run(run).has(METRICS):
            frames[f"{name} ({backbone_of(run)})"] = views.metrics_frame(state.run_metrics(str(run), state.signature(run)))
        else:
            st.caption(f"Run {name} has no metrics yet.")
if frames:
    metric = st.segmented_control("Metric", list(METRIC_TITLES.values()), default="Image AUROC", key="bb_metric")
    long = views.per_category_long(frames)
    st.plotly_chart(widgets.grouped_metric_figure(long, metric or "Image AUROC"), key="bb_metrics",
                    config={"displayModeBar": False})
