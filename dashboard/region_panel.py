"""Region -> atoms on any image: a box of grid cells (drawn on the map or set with two range sliders),
the atoms that fire most inside it and those that push it most towards 'anomalous', and each atom's
top auxiliary patches one click away."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from spg_core.atoms.build import INDEX

from . import atom_views, events, glossary, guards, nav, sticky
from .run_view import RunView, Store


def current_region(key: str, grid: tuple[int, int], start: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """The region's (rows, cols) from session_state; a new image starts on a 3 x 3 box around `start`
    (its most anomalous patch). Read before the map is drawn, so the map can show the region."""
    sticky.keep(key + "rows")
    sticky.keep(key + "cols")
    if key + "rows" not in st.session_state:
        set_region(key, box_around(start, grid))
    return tuple(st.session_state[key + "rows"]), tuple(st.session_state[key + "cols"])  # type: ignore[return-value]


def box_around(
    cell: tuple[int, int], grid: tuple[int, int], radius: int = 1
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(rows, cols) of the (2 radius + 1)-cell square centred on `cell`, clipped to the grid."""
    (h, w), (r, c) = grid, cell
    return (max(r - radius, 0), min(r + radius, h - 1)), (max(c - radius, 0), min(c + radius, w - 1))


def set_region(key: str, box: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """Set the region's (rows, cols) (a box drawn on a map, or one centred on a clicked patch)."""
    sticky.put(key + "rows", tuple(box[0]))
    sticky.put(key + "cols", tuple(box[1]))


def region_sliders(key: str, grid: tuple[int, int], start: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Row and column ranges of the region (a box drawn on the map writes them)."""
    h, w = grid
    current_region(key, grid, start)
    s1, s2 = st.columns(2)
    rows = s1.slider("Region rows", 0, h - 1, key=key + "rows")
    cols = s2.slider("Region columns", 0, w - 1, key=key + "cols")
    return tuple(rows), tuple(cols)  # type: ignore[return-value]


def on_region_select(key: str, chart_key: str, grid: tuple[int, int], opens: str | None = None) -> Callable[[], None]:
    """Plotly selection on a map whose drag draws boxes -> the region (runs before the rerun draws the
    sliders): a box of several cells becomes the region; a click (a one-cell box, or a point) centres
    a 3 x 3 region on its patch. `opens`: the key of an expander that a selection opens."""

    def callback() -> None:
        event = st.session_state.get(chart_key)
        box = events.selected_box(event)
        if box is not None and box[0][0] == box[0][1] and box[1][0] == box[1][1]:
            box = box_around((box[0][0], box[1][0]), grid)
        elif box is None:
            point = events.selected_point(event)
            box = None if point is None else box_around(point, grid)
        if box is not None:
            set_region(key, box)
            if opens is not None:
                st.session_state[opens] = True

    return callback


def maps_key(run_name: str, which: Store) -> str:
    """The Anomaly maps page's widget key prefix for one run and store."""
    return f"{run_name}::" if which is Store.TARGET else f"{run_name}::aux::"


def source_key(run_name: str) -> str:
    """Key of the Anomaly maps page's "Images from" choice for one run."""
    return f"{run_name}::source"


def open_aux_region(run_name: str, image: int, patch: int, grid: tuple[int, int]) -> None:
    """Open the Anomaly maps page on auxiliary image `image`, with a 3 x 3 region centred on `patch`
    (e.g. one of an atom's top patches: what else fires around it)."""
    key = maps_key(run_name, Store.AUX)
    cell = divmod(int(patch), grid[1])
    sticky.put(source_key(run_name), "auxiliary set")
    for name, value in (
        ("category", "all"),
        ("defect", "all"),
        ("image", int(image)),
        ("row", cell[0]),
        ("col", cell[1]),
    ):
        sticky.put(key + name, value)
    st.session_state[key + "patch_of"] = int(image)
    set_region(key + "region::", box_around(cell, grid))
    nav.open_page("maps.py")


def region_tables(found: Any, tags: dict[int, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RegionAtoms -> the two display tables, with tags and plain headers."""
    act = pd.DataFrame(found.activation, columns=["atom", "inside", "outside"])
    act["tag"] = [tags.get(int(a), "") for a in act["atom"]]
    con = pd.DataFrame(found.contribution, columns=["atom", "guide", "contribution"])
    con["tag"] = [tags.get(int(a), "") for a in con["atom"]]
    return act, con


def region_panel(
    key: str,
    view: RunView,
    query: Callable[[tuple[int, int], tuple[int, int]], Any],
    rows: tuple[int, int],
    cols: tuple[int, int],
    context: Callable[[tuple[int, int], tuple[int, int]], dict[str, Any]] | None = None,
) -> None:
    """The two rankings for the region and a picker that shows an atom's top auxiliary patches; with
    `context` (context.region_context of the region), the atoms that make it unlike the rest of its image."""
    with guards.guard("Atoms for this region are not available for this run"):
        found = query(rows, cols)
        tags = view.atom_tags()
        act, con = region_tables(found, tags)
        atom_views.flag_note(tags, [*act["atom"], *con["atom"]])
        st.caption(f"Region: rows {rows[0]}-{rows[1]}, columns {cols[0]}-{cols[1]} ({found.patches} patches)")
        left, right = st.columns(2)
        with left:
            st.markdown("**Most active inside** (what the model sees here)")
            if act.empty:
                st.info("No atom fires inside this region.")
            else:
                st.dataframe(
                    act,
                    hide_index=True,
                    key=key + "act",
                    column_config={
                        "atom": st.column_config.NumberColumn("atom", format="#%d"),
                        "inside": st.column_config.NumberColumn(
                            "mean activation inside", format="%.3f", help=glossary.say("mean activation inside")
                        ),
                        "outside": st.column_config.NumberColumn(
                            "mean activation elsewhere", format="%.3f", help=glossary.say("mean activation elsewhere")
                        ),
                        "tag": st.column_config.TextColumn("tag"),
                    },
                )
        with right:
            st.markdown("**Pushing towards anomalous** (why it is flagged)")
            if con.empty:
                st.info("No atom pushes this region towards 'anomalous'.")
            else:
                st.dataframe(
                    con,
                    hide_index=True,
                    key=key + "con",
                    column_config={
                        "atom": st.column_config.NumberColumn("atom", format="#%d"),
                        "contribution": st.column_config.NumberColumn(
                            "mean share of l_a - l_n", format="%.4f", help=glossary.say("mean share of l_a - l_n")
                        ),
                        "tag": st.column_config.TextColumn("tag"),
                    },
                )
        if context is not None:
            with guards.guard("The atom-space context is not available for this run"):
                context_note(context(rows, cols), heading=True)
        options = list(dict.fromkeys(con["atom"].tolist() + act["atom"].tolist()))
        if not options:
            return
        guards.keep_choice(key + "atom", options)
        pick_col, open_col = st.columns([2, 1], vertical_alignment="bottom")
        atom = int(
            pick_col.selectbox(
                "Atom of this region",
                options,
                key=key + "atom",
                format_func=lambda a: f"#{a}" + (f" · {tags[a]}" if tags.get(a) else ""),
            )
        )
        if open_col.button("Open atom detail", icon=":material/frame_inspect:", key=key + "open_detail"):
            nav.open_atom(view.name, atom)
        with st.expander(f"Top auxiliary patches of atom #{atom}", expanded=False):
            atom_patches(view, atom)


def context_note(found: dict[str, Any], heading: bool = False) -> None:
    """The atom-space context of a patch or region (context.region_context) in plain words: the
    guide terms say why SPG flags it, these say what makes it unlike the rest of its own image."""
    if heading:
        st.markdown("**Unlike the rest of this image** (the atom-space context, beside SPG)")
    lines = [f"- {row['words']} (+{row['share']:.3f})" for row in found["atoms"]]
    st.caption(
        f"Context {found['context']:.3f} (1 - best cosine of its atom code to a patch outside its 3 x 3 "
        "neighbourhood; 0: a look-alike exists elsewhere in the image)."
        + ("\n" + "\n".join(lines) if lines else " No atom makes it unusual in this image.")
    )


def atom_patches(view: RunView, atom: int, count: int = 6) -> None:
    """An atom's top auxiliary patches (crop + activation heatmap), or what to do without an atom index."""
    if not (view.path / INDEX).is_file():
        st.info(
            "This run has no atom index, so its atoms' top patches are unknown. Build it with `spg atoms --run DIR`.",
            icon=":material/info:",
        )
        return
    with guards.guard("The atom's top patches cannot be drawn"):
        tiles = view.atom_tiles(atom, count)
        if not tiles:
            st.info("This atom never fires on the auxiliary set.")
            return
        cols = st.columns(len(tiles))
        for col, tile in zip(cols, tiles):
            col.image(tile.crop, width="stretch", output_format="PNG", caption=tile.caption)
