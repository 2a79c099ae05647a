"""The clickable anomaly map figure and the image with its ground-truth outline.

Every map uses `spg_core.render.COLORSCALE` (plotly) or `render.map_picture` (images), so a value
has the same colour on every page.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from spg_core.render import COLORSCALE, PROBABILITY_SCALE, MapScale, display_map, draw_outline, map_picture

from .charts import FONT
from .encode import png_bytes, png_data_uri

MAP_PX = 440  # on-screen side of a map figure: large enough to see small defects
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
    return png_bytes(image_with_mask(image, mask))


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
    return png_data_uri(picture)
