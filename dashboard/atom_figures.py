"""The atom views' plotly figures: firing density, frequency-vs-activation scatter, an atom's activation
histogram and grid-position map, and a map's difference (after - before) in log-odds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .charts import GRID, layout

GUIDE_COLOURS = {"anomaly": "#E6461E", "normal": "#1E3C96", "both": "#7A1E8C", "neither": "#B4BBD0"}
DIVERGING = [[0.0, "#1E3C96"], [0.5, "#F4F5F8"], [1.0, "#E6461E"]]


def _layout(fig: go.Figure, height: int, title: str, **kwargs) -> go.Figure:
    return layout(fig, height, top=40, title=dict(text=title, x=0.02, font=dict(size=14)), **kwargs)


def density_figure(counts: np.ndarray, edges: np.ndarray, dead: int, height: int = 300) -> go.Figure:
    """Bars of live atoms per log10 firing-frequency bin (`counts` `[B]`, `edges` `[B + 1]`)."""
    fig = go.Figure(
        go.Bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=np.diff(edges),
            marker_color="#148CBE",
            customdata=np.stack([edges[:-1], edges[1:]], axis=1),
            hovertemplate="log10 share %{customdata[0]:.2f} to %{customdata[1]:.2f}: %{y} atoms<extra></extra>",
        )
    )
    fig.update_xaxes(title="log10(share of auxiliary patches the atom fires on)", gridcolor=GRID)
    fig.update_yaxes(title="atoms", gridcolor=GRID)
    title = f"Firing density of the {int(counts.sum())} live atoms ({dead} dead atoms never fire, not drawn)"
    return _layout(fig, height, title, bargap=0.04)


def scatter_figure(table: pd.DataFrame, height: int = 420) -> go.Figure:
    """Live atoms: firing frequency (log x) against mean activation, one colour per guide class;
    each point's customdata[0] is its atom id (for click-to-open). Flagged atoms are drawn as crosses."""
    live = table[table["frequency"] > 0]
    fig = go.Figure()
    for guide, colour in GUIDE_COLOURS.items():
        part = live[live["guide"] == guide]
        if part.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=part["frequency"],
                y=part["mean_activation"],
                mode="markers",
                name=f"{guide} ({len(part)})",
                marker=dict(
                    color=colour,
                    size=8 if guide != "neither" else 6,
                    symbol=["x" if f else "circle" for f in part["flags"]],
                    line=dict(width=0),
                ),
                customdata=np.stack([part["atom"], part["tag"] + " " + part["flags"]], axis=1),
                hovertemplate="#%{customdata[0]} %{customdata[1]}<br>fires on %{x:.3%}<br>"
                "mean activation %{y:.3g}<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title="share of auxiliary patches it fires on (log)", gridcolor=GRID)
    fig.update_yaxes(title="mean activation where it fires", gridcolor=GRID)
    title = "Frequency vs mean activation, coloured by guide weight (x: flagged); click a point to open it"
    return _layout(fig, height, title, legend=dict(orientation="h", y=-0.18), clickmode="event+select")


def activation_figure(sets: dict[str, pd.DataFrame], height: int = 280) -> go.Figure:
    """One atom's activation histogram per set ({'auxiliary': rows lo, hi, count}), as shares, log x."""
    fig = go.Figure()
    for (name, rows), colour in zip(sets.items(), ("#1E3C96", "#E6461E")):
        if rows.empty:
            continue
        share = rows["count"] / rows["count"].sum()
        fig.add_trace(
            go.Bar(
                x=np.sqrt(rows["lo"] * rows["hi"]),
                y=share,
                name=f"{name} ({int(rows['count'].sum())} patches)",
                marker_color=colour,
                opacity=0.6,
                customdata=np.stack([rows["lo"], rows["hi"], rows["count"]], axis=1),
                hovertemplate="%{customdata[0]:.3g} to %{customdata[1]:.3g}: %{customdata[2]} patches<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title="activation s_j where it fires (log)", gridcolor=GRID)
    fig.update_yaxes(title="share of its firing patches", gridcolor=GRID)
    return _layout(fig, height, "Activation histogram", barmode="overlay", legend=dict(orientation="h", y=-0.3))


def position_figure(mass: np.ndarray, grid: tuple[int, int], height: int = 280) -> go.Figure:
    """The atom's auxiliary activation mass per grid cell, as a share of its total (`mass` `[h * w]`)."""
    share = mass.reshape(grid) / max(float(mass.sum()), 1e-12)
    fig = go.Figure(
        go.Heatmap(
            z=share,
            colorscale="Viridis",
            colorbar=dict(thickness=10, title=dict(text="share")),
            hovertemplate="row %{y}, col %{x}: %{z:.2%}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", showgrid=False, title="row")
    fig.update_xaxes(showgrid=False, title="column")
    return _layout(fig, height, "Where on the patch grid it fires (auxiliary mass per cell)")


def difference_figure(diff: np.ndarray, title: str, height: int = 380) -> go.Figure:
    """A patch-grid map of after - before in log-odds `[h, w]`, blue (less anomalous) to red, centred on 0."""
    bound = max(float(np.abs(diff).max()), 1e-6)
    fig = go.Figure(
        go.Heatmap(
            z=diff,
            zmin=-bound,
            zmax=bound,
            colorscale=DIVERGING,
            colorbar=dict(thickness=10, title=dict(text="Δ log-odds")),
            hovertemplate="row %{y}, col %{x}: %{z:+.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False, constrain="domain")
    return _layout(fig, height, title)
