"""Reusable UI pieces of SPG Studio: guards, empty states, and the plotly figures.

Every map uses `spg_core.render.COLORSCALE` (plotly) or `render.colorize` /
`render.overlay` (images), so a value has the same colour on every page.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from spg_core.errors import SPGError
from spg_core.render import COLORSCALE, PROBABILITY_SCALE, MapScale, display_map, draw_outline, map_picture

from . import state
from .viewmodels.health import RunHealth, check_run, demo_progress
from .viewmodels.sweeps import SWEEP_CSV, sweep_html

MAP_PX = 440  # on-screen side of a map figure: large enough to see small defects
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=14, color="#141A33")
BRAND = ["#1E3C96", "#E6461E", "#3CC8A0", "#FAAA28", "#148CBE", "#96A0C8", "#7A1E8C", "#4E5A6E"]


# -- guards and states ---------------------------------------------------------------------------


def error_box(exc: BaseException, context: str) -> None:
    """Show an SPGError (or any failure) as one readable message, never a traceback."""
    if isinstance(exc, SPGError):
        lines = str(exc).splitlines()
        body = f"**{context}.** {lines[0]}"
        if exc.path:
            body += f"\n\n`{exc.path}`"
        if exc.fix:
            body += f"\n\nFix: {exc.fix}"
    else:
        body = f"**{context}.** {type(exc).__name__}: {exc}"
    st.error(body, icon=":material/report:")


@contextlib.contextmanager
def guard(context: str) -> Iterator[None]:
    """Run a page section; a damaged artifact shows a message here and the page goes on."""
    try:
        yield
    except SPGError as exc:
        error_box(exc, context)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # damaged files that slip past checks
        error_box(exc, context)


def empty_state(root: Path) -> None:
    """No runs yet: say how to make one."""
    st.markdown(
        f"""<div class="spg-empty">
<h3 style="margin-top:0">No runs yet</h3>
<p>SPG Studio shows the run directories under <code>{html.escape(str(root))}</code>, and there are none.
Make one and it appears here within a few seconds:</p>
<ul>
<li>the built-in demo (synthetic data, no download, a few minutes on a CPU):<br>
<code>spg dashboard --demo</code></li>
<li>your own experiment:<br>
<code>spg run --aux mvtec:PATH --target visa:PATH --out {html.escape(str(root))}/my-run</code></li>
</ul></div>""",
        unsafe_allow_html=True,
    )


def demo_progress_note(root: Path) -> None:
    """The demo builder's progress (RUNS/.demo_progress.json) while a demo run builds in the background."""
    progress = demo_progress(root)
    if progress is None or progress["done"]:
        return
    if progress["stopped"]:
        st.warning(f"A demo run is not finished: {progress['text']}.", icon=":material/warning:")
    else:
        st.progress(progress["fraction"], text=f"Building a demo run: {progress['text']}. It appears here when done.")


def require_run() -> Path:
    """The chosen run, or an empty state / message and stop."""
    try:
        run = state.current_run()
    except SPGError as exc:
        error_box(exc, "This run cannot be opened")
        st.stop()
    if run is None:
        empty_state(state.runs_root())
        st.stop()
    return run


def run_health(run: Path, banner: bool = True) -> RunHealth:
    """The run's health check; with `banner`, a one-line warning when something is missing or damaged."""
    health = check_run(run)
    if banner and health.problems:
        st.warning(
            "This run is incomplete or damaged: " + "; ".join(health.problems) + ". "
            "What depends on it is left out below.",
            icon=":material/construction:",
        )
    if banner and health.notes:
        st.info("This run is complete, but " + "; ".join(health.notes) + ".", icon=":material/info:")
    return health


def require(health: RunHealth, files: Sequence[str], purpose: str) -> None:
    """Stop the page with a clear message when the run lacks what it needs."""
    missing = health.missing(*files)
    if missing:
        st.warning(
            f"**{purpose} is not available for this run**: its {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} missing or damaged.\n\n"
            f"Run directory: `{health.path}`",
            icon=":material/construction:",
        )
        st.stop()


def keep_choice(key: str, options: Sequence[Any]) -> None:
    """Before a selectbox whose options change (filters, another atom): keep its choice while it is
    still an option, else start on the first one (a stale value would not be in the list)."""
    if options and st.session_state.get(key) not in options:
        st.session_state[key] = options[0]


def pill(text: str, kind: str = "neutral") -> str:
    """An inline status pill (HTML) styled by assets/style.css."""
    return f'<span class="spg-pill {html.escape(kind)}">{html.escape(text)}</span>'


def page_header(title: str, subtitle: str, run: Path | None = None) -> None:
    st.title(title)
    caption = subtitle if run is None else f"{subtitle} · run **{run.name}**"
    st.caption(caption)


# -- maps ------------------------------------------------------------------------------------------


def _layout(fig: go.Figure, height: int, **kwargs: Any) -> go.Figure:
    fig.update_layout(
        height=height,
        margin=dict(l=8, r=8, t=36, b=8),
        font=FONT,
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        **kwargs,
    )
    return fig


TRUTH_COLOUR = (60, 255, 120)  # ground-truth outlines, on the image and on the map alike


def image_with_mask(image: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """The image with the ground-truth outline drawn in green (no outline for good images)."""
    pil = Image.fromarray(image)
    if mask is not None and mask.any():
        pil = draw_outline(pil, mask, colour=TRUTH_COLOUR)
    return pil


@st.cache_data(show_spinner=False, max_entries=128)
def image_with_mask_png(image: np.ndarray, mask: np.ndarray | None) -> bytes:
    """`image_with_mask` `[S, S, 3]` + `[S, S]` as PNG bytes, encoded once (st.image re-encodes a PIL
    image on every rerun)."""
    buf = io.BytesIO()
    image_with_mask(image, mask).save(buf, format="PNG")
    return buf.getvalue()


# Figure builders below that a page calls on every rerun are cached with st.cache_resource: plotly
# validates every property as a figure is built (tens of ms a figure), and a rerun after a click
# mostly redraws the same figures. A cached figure is shared, so nothing may change it after it is
# built (st.plotly_chart only reads it).


@st.cache_resource(show_spinner=False, max_entries=128)
def patch_map_figure(
    image: Image.Image | np.ndarray,
    probs: np.ndarray,
    *,
    opacity: float,
    scale: MapScale = PROBABILITY_SCALE,
    smoothing_sigma: float = 0.0,
    contour_level: float | None = None,
    truth: np.ndarray | None = None,
    selected: tuple[int, int] | None = None,
    region: tuple[tuple[int, int], tuple[int, int]] | None = None,
    title: str = "",
    height: int = MAP_PX,
    colorbar: bool = True,
    box_select: bool = False,
) -> go.Figure:
    """Clickable anomaly map: patch probabilities `[h, w]` drawn as the run's protocol sees them
    (upsampled, smoothed with `smoothing_sigma`) on `scale`, over the image, one click target per patch.

    Outlines: white where the map reaches `contour_level` (a probability), green the ground truth
    `truth` `[S, S]`; a white box around `selected` (row, col), a dashed one around `region`
    ((row0, row1), (col0, col1)). Hover gives the patch's exact probability. With `box_select`, a drag
    draws a box (a region) instead of a click selecting a patch.
    """
    h, w = probs.shape
    picture = map_picture_uri(
        np.asarray(image, dtype=np.uint8),
        np.asarray(probs),
        scale,
        opacity,
        smoothing_sigma,
        contour_level,
        None if truth is None else np.asarray(truth, dtype=bool),
    )
    traces = []
    if colorbar:  # an invisible trace that carries the colour bar of `scale`
        traces.append(
            go.Heatmap(
                z=[[scale.vmin, scale.vmax]],
                x=[0, 1],
                y=[0],
                zmin=scale.vmin,
                zmax=scale.vmax,
                colorscale=COLORSCALE,
                opacity=0,
                hoverinfo="skip",
                showscale=True,
                colorbar=dict(
                    thickness=10,
                    len=0.85,
                    tickvals=[scale.vmin, scale.vmax],
                    ticktext=[t.replace("\n", "<br>") for t in scale.tick_text],
                    tickfont=dict(size=10),
                ),
            )
        )
    rows, cols = np.mgrid[0:h, 0:w]
    traces.append(
        go.Scatter(
            x=cols.ravel(),
            y=rows.ravel(),
            mode="markers",
            customdata=probs.ravel(),
            marker=dict(size=max(4, int(height * 0.8 / max(h, w))), color="rgba(0,0,0,0)", symbol="square"),
            hovertemplate="row %{y}, col %{x}<br>p(anomaly) %{customdata:.3g}<extra></extra>",
            showlegend=False,
        )
    )
    shapes = []
    if selected is not None:
        r, c = selected
        shapes.append(
            dict(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color="#FFFFFF", width=3))
        )
    if region is not None:
        (r0, r1), (c0, c1) = region
        shapes.append(
            dict(
                type="rect",
                x0=c0 - 0.5,
                x1=c1 + 0.5,
                y0=r0 - 0.5,
                y1=r1 + 0.5,
                line=dict(color="#FAAA28", width=3, dash="dash"),
            )
        )
    # One layout dict, validated once (each update_* call validates again). Square cells, the picture
    # pinned to the top-left of the figure (no band above it).
    layout = dict(
        height=height,
        font=FONT,
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        margin=dict(l=8, r=8, t=36, b=8) if title else dict(l=4, r=4, t=4, b=4),
        images=[
            dict(source=picture, xref="x", yref="y", x=-0.5, y=-0.5, sizex=w, sizey=h, sizing="stretch", layer="below")
        ],
        shapes=shapes,
        clickmode="event+select",
        dragmode="select" if box_select else False,
        xaxis=dict(visible=False, range=[-0.5, w - 0.5], constrain="domain", constraintoward="left"),
        yaxis=dict(visible=False, range=[h - 0.5, -0.5], scaleanchor="x", constrain="domain", constraintoward="top"),
    )
    if title:
        layout["title"] = dict(text=title, x=0.02, font=dict(size=15))
    return go.Figure(data=traces, layout=layout)


@st.cache_data(show_spinner=False, max_entries=256)
def map_picture_uri(
    image: np.ndarray,
    probs: np.ndarray,
    scale: MapScale,
    opacity: float,
    smoothing_sigma: float,
    contour_level: float | None,
    truth: np.ndarray | None,
) -> str:
    """The map picture of `patch_map_figure` as a PNG data URI: image `[S, S, 3]` uint8, patch probabilities
    `[h, w]`, truth `[S, S]` bool. Upsampling, smoothing, colouring and PNG encoding are most of a map
    page's rerun, and a rerun after a click or a new region draws the same picture: cached on its inputs."""
    pil = Image.fromarray(image)
    full = display_map(probs, pil.size[0], smoothing_sigma)
    picture = map_picture(pil, full, scale, alpha=opacity, contour_level=contour_level, truth=truth)
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def selected_box(event: Any) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((row0, row1), (col0, col1)) of a box drawn on a `patch_map_figure` (plotly box select), if any."""
    try:
        boxes = event["selection"]["box"]
    except (KeyError, TypeError):
        return None
    for b in boxes:
        xs, ys = b.get("x"), b.get("y")
        if xs and ys and len(xs) >= 2 and len(ys) >= 2:
            c0, c1 = sorted(int(round(v)) for v in (min(xs), max(xs)))
            r0, r1 = sorted(int(round(v)) for v in (min(ys), max(ys)))
            return (r0, r1), (c0, c1)
    return None


def selected_point(event: Any) -> tuple[int, int] | None:
    """(row, col) of the clicked patch in a `patch_map_figure` selection event, if any."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return None
    for p in points:
        if "x" in p and "y" in p:
            return int(round(p["y"])), int(round(p["x"]))
    return None


# -- charts ---------------------------------------------------------------------------------------


def atom_bar_figure(
    frame: pd.DataFrame, value: str, title: str, colour: str, height: int = 360, xtitle: str = ""
) -> go.Figure:
    """Horizontal bars of atoms ranked by `value` (largest on top), labelled with their tags."""
    frame = frame.iloc[::-1]
    labels = [
        f"#{int(a)}" + (f"  {t}" if isinstance(t, str) and t else "")
        for a, t in zip(frame["atom"], frame.get("tag", [""] * len(frame)))
    ]
    fig = go.Figure(
        go.Bar(
            x=frame[value],
            y=labels,
            orientation="h",
            marker_color=colour,
            hovertemplate="%{y}<br>" + value + " %{x:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(type="category", tickfont=dict(size=12))
    fig.update_xaxes(title=xtitle or value, gridcolor="#E3E7F2")
    return _layout(fig, height, title=dict(text=title, x=0.02, font=dict(size=15)))


def kind_heatmap_figure(
    values: np.ndarray, atoms: Sequence[int], kinds: Sequence[tuple[str, str]], tags: dict[int, str], height: int = 520
) -> go.Figure:
    """Atom x defect-kind heatmap `[A, K]` (mean activation inside the kind's masks); click a cell."""
    rows = [f"#{a}" + (f" {tags.get(int(a), '')}" if tags.get(int(a)) else "") for a in atoms]
    cols = [f"{c} / {d}" for c, d in kinds]
    fig = go.Figure(
        go.Heatmap(
            z=values,
            x=cols,
            y=rows,
            colorscale=COLORSCALE,
            zmin=0,
            colorbar=dict(title=dict(text="mean activation<br>in defect", side="right"), thickness=10),
            hoverinfo="skip",
        )
    )
    # Plotly selects points, not heatmap cells: one transparent marker per cell carries hover and clicks.
    xs, ys = np.meshgrid(np.arange(len(cols)), np.arange(len(rows)))
    fig.add_trace(
        go.Scatter(
            x=[cols[i] for i in xs.ravel()],
            y=[rows[j] for j in ys.ravel()],
            mode="markers",
            customdata=np.asarray(values).ravel(),
            showlegend=False,
            marker=dict(size=14, color="rgba(0,0,0,0)", symbol="square"),
            hovertemplate="%{y}<br>%{x}<br>mean activation %{customdata:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=11))
    fig.update_xaxes(type="category", tickangle=-35, tickfont=dict(size=11), side="top")
    return _layout(fig, height, clickmode="event+select", dragmode=False)


def _small_frame_key(frame: pd.DataFrame) -> tuple:
    """A cache key of a small table by its values (Streamlit's DataFrame hash costs ~5 ms a table)."""
    return tuple(frame.columns), frame.to_numpy().tolist()


@st.cache_resource(show_spinner=False, max_entries=128, hash_funcs={pd.DataFrame: _small_frame_key})
def contribution_figure(frame: pd.DataFrame, height: int = 320) -> go.Figure:
    """Per-atom contributions to one patch's anomaly logit: positive push towards 'anomalous'."""
    frame = frame.iloc[::-1]
    colours = ["#E6461E" if v >= 0 else "#1E3C96" for v in frame["contribution"]]
    labels = [f"#{int(a)} ({g})" for a, g in zip(frame["atom"], frame["guide"])]
    bar = go.Bar(
        x=frame["contribution"],
        y=labels,
        orientation="h",
        marker_color=colours,
        hovertemplate="%{y}<br>contribution %{x:.4f}<extra></extra>",
    )
    return go.Figure(
        bar,
        layout=dict(  # one layout dict: validated once (it is redrawn per patch)
            height=height,
            margin=dict(l=8, r=8, t=36, b=8),
            font=FONT,
            paper_bgcolor="rgba(0,0,0,0)",
            plot_bgcolor="rgba(0,0,0,0)",
            title=dict(text="Top contributing atoms", x=0.02, font=dict(size=15)),
            yaxis=dict(type="category"),
            xaxis=dict(
                title="contribution to the anomaly logit", zeroline=True, zerolinecolor="#141A33", gridcolor="#E3E7F2"
            ),
        ),
    )


def histogram_figure(
    values: Sequence[float] | np.ndarray,
    title: str,
    xtitle: str,
    height: int = 260,
    colour: str = "#1E3C96",
    bins: int = 40,
) -> go.Figure:
    """A histogram binned here (40 bars to send, not every value: an atom can fire on 100k patches)."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(
        go.Bar(
            x=centres,
            y=counts,
            width=np.diff(edges),
            marker_color=colour,
            customdata=np.stack([edges[:-1], edges[1:]], axis=1),
            hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}: %{y}<extra></extra>",
        )
    )
    fig.update_xaxes(title=xtitle, gridcolor="#E3E7F2")
    fig.update_yaxes(title="patches", gridcolor="#E3E7F2")
    return _layout(fig, height, title=dict(text=title, x=0.02, font=dict(size=14)), bargap=0.05)


def category_bar_figure(values: pd.Series, title: str, height: int = 260) -> go.Figure:
    """One bar per category (e.g. an atom's mean activation per auxiliary category)."""
    fig = go.Figure(
        go.Bar(
            x=list(values.index),
            y=list(values.values),
            marker_color="#148CBE",
            hovertemplate="%{x}: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(title=str(values.name or ""), gridcolor="#E3E7F2")
    return _layout(fig, height, title=dict(text=title, x=0.02, font=dict(size=14)))


def grouped_metric_figure(long: pd.DataFrame, metric: str, height: int = 420) -> go.Figure:
    """Per-category bars of one metric, one colour per run (Backbones page)."""
    data = long[long["metric"] == metric]
    fig = go.Figure()
    for i, (run, part) in enumerate(data.groupby("run", sort=False)):
        fig.add_trace(
            go.Bar(
                name=run,
                x=part["category"],
                y=part["value"],
                marker_color=BRAND[i % len(BRAND)],
                hovertemplate=f"{run}<br>%{{x}}: %{{y:.1f}}%<extra></extra>",
            )
        )
    fig.update_yaxes(title=f"{metric} (%)", range=[0, 100], gridcolor="#E3E7F2")
    return _layout(
        fig,
        height,
        barmode="group",
        legend=dict(orientation="h", y=-0.18),
        title=dict(text=metric, x=0.02, font=dict(size=15)),
    )


def run_metrics_figure(frame: pd.DataFrame, height: int = 340) -> go.Figure:
    """One run's four metrics per category (rows of `viewmodels.tables.metrics_frame`), grouped bars."""
    fig = go.Figure()
    for i, metric in enumerate(frame.columns):
        fig.add_trace(
            go.Bar(
                name=metric,
                x=list(frame.index),
                y=frame[metric],
                marker_color=BRAND[i % len(BRAND)],
                hovertemplate=f"{metric}<br>%{{x}}: %{{y:.1f}}%<extra></extra>",
            )
        )
    fig.update_yaxes(title="%", range=[0, 100], gridcolor="#E3E7F2")
    fig = _layout(fig, height, barmode="group", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
    fig.update_layout(margin=dict(t=48))
    return fig


def sweep_view(sweep_dir: Path, key: str) -> None:
    """A sweep's figures, redrawn from its sweep.csv (offline: its HTML files load plotly.js from a CDN);
    the HTML files only when the table is missing."""
    table = sweep_dir / SWEEP_CSV
    if table.is_file():
        figures = state.sweep_figures(str(sweep_dir), table.stat().st_mtime)
        if not figures:
            st.info("This sweep varies nothing that has a figure (one setting per axis).")
        for name, fig in figures.items():
            st.plotly_chart(fig, key=f"{key}_{name}", config={"displayModeBar": False})
        return
    for page in sweep_html(sweep_dir):
        st.markdown(f"**{page.stem}**")
        st.iframe(page, height=520)


def metric_cards(values: dict[str, float], deltas: dict[str, float] | None = None) -> None:
    """A row of st.metric cards (values in %)."""
    cols = st.columns(len(values))
    for col, (name, v) in zip(cols, values.items()):
        delta = None if deltas is None or name not in deltas else f"{deltas[name]:+.1f}"
        col.metric(name, "n/a" if v != v else f"{v:.1f}%", delta)
