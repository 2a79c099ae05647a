"""The plotly charts of SPG Studio (bars, histograms, the atom x defect-kind heatmap), in one look."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from spg_core.render import COLORSCALE

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=14, color="#141A33")
BRAND = ["#1E3C96", "#E6461E", "#3CC8A0", "#FAAA28", "#148CBE", "#96A0C8", "#7A1E8C", "#4E5A6E"]


GRID = "#E3E7F2"


def layout(fig: go.Figure, height: int, *, top: int = 36, **kwargs: Any) -> go.Figure:
    """The dashboard's chart frame: transparent background, brand font, thin margins (`top` px above)."""
    fig.update_layout(
        height=height,
        margin=dict(l=8, r=8, t=top, b=8),
        font=FONT,
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        **kwargs,
    )
    return fig


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
    fig.update_xaxes(title=xtitle or value, gridcolor=GRID)
    return layout(fig, height, title=dict(text=title, x=0.02, font=dict(size=15)))


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
    fig.update_yaxes(
        type="category", autorange="reversed", tickfont=dict(size=13), title=dict(text="atom (id, tag)", standoff=4)
    )
    fig.update_xaxes(
        type="category",
        tickangle=-35,
        tickfont=dict(size=13),
        side="bottom",
        title=dict(text="auxiliary defect kind (category / defect type)", standoff=4),
    )
    return layout(fig, height, clickmode="event+select", dragmode=False)


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
                title="contribution to the anomaly logit", zeroline=True, zerolinecolor="#141A33", gridcolor=GRID
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
    fig.update_xaxes(title=xtitle, gridcolor=GRID)
    fig.update_yaxes(title="patches", gridcolor=GRID)
    return layout(fig, height, title=dict(text=title, x=0.02, font=dict(size=14)), bargap=0.05)


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
    fig.update_yaxes(title=str(values.name or ""), gridcolor=GRID)
    return layout(fig, height, title=dict(text=title, x=0.02, font=dict(size=14)))


def difference_range(values: Any, pad: float = 0.25) -> list[float]:
    """A bar axis that shows differences: from a little below the smallest value to a little above the
    largest (within 0-100 %), not from 0, where 95 and 97 would look the same."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return [0.0, 100.0]
    span = max(float(v.max() - v.min()), 2.0)
    return [max(0.0, float(v.min()) - pad * span), min(100.0, float(v.max()) + pad * span)]


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
    fig.update_yaxes(title=f"{metric} (%)", range=difference_range(data["value"]), gridcolor=GRID)
    return layout(
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
    fig.update_yaxes(title="%", range=difference_range(frame.to_numpy().ravel()), gridcolor=GRID)
    return layout(fig, height, top=48, barmode="group", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
