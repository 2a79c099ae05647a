"""Backbones: two to four runs side by side on one target image, and their per-category metrics."""

from __future__ import annotations

import contextlib
from typing import Any

import streamlit as st

from dashboard import charts, glossary, guards, pills, state
from dashboard.map_figure import image_with_mask, patch_map_figure
from dashboard.page import page_header
from dashboard.run_view import RunView, Store
from dashboard.viewmodels.health import check_run
from dashboard.viewmodels.tables import metrics_frame, per_category_long
from dashboard.viewmodels.targets import common_targets, format_score
from spg_core.errors import SPGError
from spg_core.render import PROBABILITY_SCALE, fitted_scale, sigmoid
from spg_core.report import METRIC_TITLES
from spg_core.run_paths import resolve_run
from spg_core.runs import METRICS_FILE as METRICS
from spg_core.runs import PATCH_MAPS_FILE as PATCH_MAPS
from spg_core.runs import SCORES_FILE as SCORES

# What a damaged run can raise while loading; it is reported and left out, the others go on.
DAMAGE = (SPGError, OSError, ValueError, KeyError, RuntimeError)
MAP_HEIGHT = {2: 460, 3: 380, 4: 320}  # by number of runs: maps as large as their columns allow

root = state.runs_root()
page_header(
    "Backbones",
    "Compare runs (e.g. the same experiment with different backbones) on the same target image and per category; "
    "each map is on its own run's fitted colour scale, with its verdict at its own threshold",
)


def default_selection(names: list[str]) -> list[str]:
    """The sidebar's run first, then the newest others (up to 3 runs)."""
    current = st.session_state.get(state.RUN_KEY)
    first = [current] if current in names else []
    return (first + [n for n in names if n != current])[:3]


def backbone_of(run: RunView) -> str:
    try:
        return str(run.config().get("backbone", "?"))
    except DAMAGE:  # a damaged config is reported where the run is used
        return "?"


def target_rows(runs: dict[str, RunView]) -> dict[str, list[dict[str, Any]]]:
    """scores.csv rows of every run whose target outputs load; a warning for each one that does not."""
    tables = {}
    for name, run in runs.items():
        health = check_run(run.path)
        missing = health.missing(PATCH_MAPS, SCORES)
        try:
            if missing:
                raise SPGError(f"its {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing or damaged")
            tables[name] = run.target_outputs().rows
        except DAMAGE as exc:
            st.warning(
                f"Run **{name}** is left out of the image comparison: {str(exc).splitlines()[0]}.",
                icon=":material/construction:",
            )
    return tables


def side_by_side(runs: dict[str, RunView], tables: dict[str, list[dict[str, Any]]]) -> None:
    """One target image (common to every run) with each run's map."""
    st.subheader("Same image, every run")
    common = common_targets(tables)
    if common.empty:
        st.info("These runs share no target image, so there is nothing to show side by side.", icon=":material/info:")
        return
    c1, c2, c3 = st.columns([1, 2, 1])
    category = c1.selectbox("Category", sorted(common["category"].unique()), key="bb_category")
    in_cat = common[common["category"] == category].set_index("image_path", drop=False)
    labels = {p: f"{n}  ·  {d}" for p, n, d in zip(in_cat["image_path"], in_cat["name"], in_cat["defect"])}
    guards.keep_choice("bb_image", list(labels))
    pick = c2.selectbox("Image", list(labels), key="bb_image", format_func=lambda p: labels.get(p, p))
    opacity = c3.slider("Map opacity", 0.0, 1.0, 0.55, 0.05, key="bb_opacity")
    row = in_cat.loc[pick]
    cols = st.columns(len(tables))
    for col, name in zip(cols, tables):
        with col, guards.guard(f"Run {name} cannot be shown"):
            run_map(runs[name], name, int(row[name]), row["image_path"], opacity, height=MAP_HEIGHT.get(len(cols), 320))


def run_map(run: RunView, name: str, index: int, image_path: str, opacity: float, height: int) -> None:
    """One run's map of the image on the run's own fitted colour scale (runs' scales differ, so each map
    has its colour bar), and its verdict at its own auxiliary threshold."""
    target = run.target_outputs()
    image = state.image_at(image_path, target.image_size)
    background = image_with_mask(image, run.mask(Store.TARGET, index))
    scale, contour, threshold = PROBABILITY_SCALE, 0.5, None
    with contextlib.suppress(*DAMAGE):  # no auxiliary store: the 0-1 scale and no verdict, said below
        record = run.threshold()
        scale, contour = fitted_scale(record["pixel_scale"]), sigmoid(record["pixel_scale"]["vmax"])
        threshold = float(record["image"]["threshold"])
    fig = patch_map_figure(
        background,
        target.probs[index],
        opacity=opacity,
        scale=scale,
        contour_level=contour,
        smoothing_sigma=run.smoothing_sigma(),
        title=backbone_of(run),
        height=height,
    )
    st.plotly_chart(fig, key=f"bb_map_{name}", config={"displayModeBar": False})
    score = float(target.rows[index]["score"])
    if threshold is None:
        st.metric(name, f"score {format_score(score)}", border=True, help="no auxiliary threshold: no verdict")
        return
    verdict = "anomalous" if score >= threshold else "normal"
    st.metric(
        name,
        f"score {format_score(score)}",
        border=True,
        help=f"{glossary.say('image score')}; this run's threshold {format_score(threshold)} was chosen on its "
        "auxiliary set",
    )
    st.markdown(
        pills.pill(f"{verdict} at its threshold {format_score(threshold)}", verdict) + f" · {scale.legend}",
        unsafe_allow_html=True,
    )


def metric_bars(runs: dict[str, RunView]) -> None:
    """Per-category metrics of every run with readable metrics, as grouped bars."""
    st.subheader("Per-category metrics")
    frames = {}
    for name, run in runs.items():
        with guards.guard(f"The metrics of run {name} cannot be read"):
            if not check_run(run.path).has(METRICS):
                st.caption(f"Run {name} has no metrics yet.")
                continue
            metrics = run.metrics()
            frames[f"{name} ({backbone_of(run)})"] = metrics_frame(metrics)
    if frames:
        metric = (
            st.segmented_control("Metric", list(METRIC_TITLES.values()), default="Image AUROC", key="bb_metric")
            or "Image AUROC"
        )
        st.plotly_chart(
            charts.grouped_metric_figure(per_category_long(frames), metric),
            key="bb_metrics",
            config={"displayModeBar": False},
        )


def main() -> None:
    names = state.run_names(str(root))
    if not names:
        guards.empty_state(root)
        return
    if len(names) < 2:
        st.info(
            f"Comparing needs at least two runs under the runs root; there is one ({names[0]}), shown alone "
            "below. Make another with a different backbone and it appears here, e.g. "
            "`spg run --aux synthetic-a --target synthetic-b --backbone builtin --out runs/other`.",
            icon=":material/info:",
        )
        with guards.guard(f"Run {names[0]} cannot be opened"):
            metric_bars({names[0]: RunView.of(resolve_run(root, names[0]))})
        return
    if "bb_runs" not in st.session_state:
        st.session_state["bb_runs"] = default_selection(names)
    else:  # a run deleted meanwhile must not stay selected
        st.session_state["bb_runs"] = [n for n in st.session_state["bb_runs"] if n in names]
    chosen = st.multiselect("Runs to compare (2 to 4)", names, max_selections=4, key="bb_runs")
    if len(chosen) < 2:
        st.info("Choose at least two runs.", icon=":material/info:")
        return
    runs = {}
    for name in chosen:
        with guards.guard(f"Run {name} cannot be opened"):
            runs[name] = RunView.of(resolve_run(root, name))
    side_by_side(runs, target_rows(runs))
    metric_bars(runs)


main()
