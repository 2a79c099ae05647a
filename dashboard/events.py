"""Plotly selection events -> grid cells: what a click or a drawn box on a chart selected."""

from __future__ import annotations

from typing import Any


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


def clicked_cell(event: Any) -> tuple[Any, Any] | None:
    """(y, x) labels of the first clicked point of a chart selection event (a heatmap cell), if any."""
    try:
        point = event["selection"]["points"][0]
        return point["y"], point["x"]
    except (KeyError, TypeError, IndexError):
        return None
