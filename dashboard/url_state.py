"""The explore state in the URL: run, image, patch, region and atom as query parameters, so every view is a link.

Names (shared by every page): `run` (a run name under the root), `store` (`aux` for the auxiliary
images; absent for the target set), `image` (`category/defect/file.png`), `patch` (`row,col`),
`region` (`row0-row1,col0-col1`), `atom` (an atom id). `/maps?run=RUN&image=NAME` opens that image;
`/atom?run=RUN&atom=ID` opens that atom.

A parameter is applied to the page's state only when it differs from what the app last wrote, so
a pasted or edited link wins while the app's own URL updates never fight the widgets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import streamlit as st

RUN, STORE, IMAGE, PATCH, REGION, ATOM = "run", "store", "image", "patch", "region", "atom"
AUX = "aux"  # the `store` value of the auxiliary images
WRITTEN = "_url_written"  # session_state: the parameters this app last wrote

_PATCH = re.compile(r"^\s*(\d+)\s*,\s*(\d+)\s*$")
_REGION = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*,\s*(\d+)\s*-\s*(\d+)\s*$")

Cell = tuple[int, int]
Box = tuple[tuple[int, int], tuple[int, int]]


def image_name(image_path: str, category: str) -> str:
    """An image's name in a URL: `category/defect/file.png` (file names repeat across folders)."""
    path = Path(image_path)
    return f"{category}/{path.parent.name}/{path.name}"


def format_patch(cell: Cell) -> str:
    return f"{int(cell[0])},{int(cell[1])}"


def parse_patch(text: str | None, grid: tuple[int, int]) -> Cell | None:
    """(row, col) from `row,col`, or None when the text is not a cell of `grid`."""
    found = _PATCH.match(text or "")
    if not found:
        return None
    r, c = int(found[1]), int(found[2])
    return (r, c) if r < grid[0] and c < grid[1] else None


def format_region(box: Box) -> str:
    (r0, r1), (c0, c1) = box
    return f"{int(r0)}-{int(r1)},{int(c0)}-{int(c1)}"


def parse_region(text: str | None, grid: tuple[int, int]) -> Box | None:
    """((row0, row1), (col0, col1)) from `row0-row1,col0-col1`, or None unless it is a box inside `grid`."""
    found = _REGION.match(text or "")
    if not found:
        return None
    r0, r1, c0, c1 = (int(found[i]) for i in range(1, 5))
    if not (r0 <= r1 < grid[0] and c0 <= c1 < grid[1]):
        return None
    return (r0, r1), (c0, c1)


def parse_int(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def incoming(names: tuple[str, ...]) -> dict[str, str]:
    """The parameters among `names` that a link brought: present in the URL and not what the app last wrote."""
    written = st.session_state.get(WRITTEN, {})
    params = st.query_params
    return {n: params[n] for n in names if n in params and params[n] != written.get(n)}


def write(values: Mapping[str, str | None]) -> None:
    """Put the view's state in the URL (None removes a parameter); remembered, so it is not re-applied."""
    written = dict(st.session_state.get(WRITTEN, {}))
    for name, value in values.items():
        if value is None:
            if name in st.query_params:
                del st.query_params[name]
            written.pop(name, None)
        else:
            if st.query_params.get(name) != value:
                st.query_params[name] = value
            written[name] = value
    st.session_state[WRITTEN] = written
