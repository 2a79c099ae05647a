"""Atoms: the guides' active atoms ranked by coefficient, with tags and statistics; open one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, guards, nav, state
from dashboard.page import run_page
from dashboard.viewmodels.attribution import atom_table, atom_table_columns, dead_atoms, live_ranking
from spg_core.atoms.build import INDEX
from spg_core.runs import GUIDES_FILE as GUIDES

view, health = run_page(
    "Atoms", "The dictionary atoms each guide is built from, largest coefficient first", [GUIDES], "Atom ranking"
)
key = f"{view.name}::atoms::"

with guards.guard("The atoms of this run cannot be ranked"):
    ranking = view.atom_ranking()
    stats = None
    if not health.has(INDEX):
        st.info(
            "This run has no atom index yet, so tags and statistics are missing. Build it with `spg atoms --run DIR`.",
            icon=":material/info:",
        )
    else:
        with guards.guard("The atom index cannot be read, so tags and statistics are left out"):
            stats = view.atoms()[1]
    dead = dead_atoms(stats)
    ranking = live_ranking(ranking, dead)
    if dead:
        st.caption(
            f"{len(dead)} dead atoms (never firing on the auxiliary set) are left out of the rankings "
            f"below: they have no auxiliary patches to show (open one by number on Atom detail)."
        )
    table = atom_table(ranking, stats)

    c1, c2, c3 = st.columns(3)
    c1.metric("Active anomaly atoms", len(ranking["anomaly"]), border=True)
    c2.metric("Active normal atoms", len(ranking["normal"]), border=True)
    c3.metric(
        "In both guides",
        len({a["atom"] for a in ranking["anomaly"]} & {a["atom"] for a in ranking["normal"]}),
        border=True,
    )

    top_n = st.slider("Atoms per chart", 5, 40, 15, key=key + "top_n")
    left, right = st.columns(2)
    for col, guide, colour in ((left, "anomaly", "#E6461E"), (right, "normal", "#1E3C96")):
        part = table[table["guide"] == guide].head(top_n)
        with col:
            if part.empty:
                st.info(f"The {guide} guide has no active atoms.")
            else:
                fig = charts.atom_bar_figure(
                    part,
                    "share",
                    f"{guide.capitalize()} guide, largest first",
                    colour,
                    height=120 + 22 * len(part),
                    xtitle="share of the guide (%)",
                )
                st.plotly_chart(fig, key=key + f"bar_{guide}", config={"displayModeBar": False})

    st.subheader("All active atoms")
    shown = st.segmented_control("Guide", ["both", "anomaly", "normal"], default="both", key=key + "guide")
    listed = table if shown in (None, "both") else table[table["guide"] == shown]
    config = {
        c: st.column_config.NumberColumn(spec["label"], format=spec["format"], width="medium")
        for c, spec in atom_table_columns().items()
        if c in listed.columns
    }
    config["share"] = st.column_config.ProgressColumn(
        "share of guide (%)", format="%.1f", min_value=0, max_value=float(table["share"].max() or 1)
    )
    st.dataframe(listed, hide_index=True, key=key + "table", height=360, column_config=config)

    options = listed["atom"].drop_duplicates().tolist()
    if options:
        c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
        tags = view.atom_tags()
        guards.keep_choice(key + "pick", options)
        atom = c1.selectbox(
            "Atom", options, key=key + "pick", format_func=lambda a: f"#{a}" + (f" · {tags[a]}" if tags.get(a) else "")
        )
        if c2.button("Open atom detail", type="primary", icon=":material/frame_inspect:", key=key + "open"):
            st.session_state[state.ATOM_KEY] = int(atom)
            nav.open_page("atom_detail.py")


def kind_section() -> None:
    """Atom x defect-kind heatmap: sortable rows, a cell (clicked or picked) opens its patches."""
    st.subheader("Atoms x auxiliary defect kinds")
    st.caption(
        "Mean activation of each live guide atom inside the masks of each auxiliary defect kind "
        "(category / defect type). A class-general atom's row spans several categories; a class-specific "
        "one stays in one category's columns. Click a cell, or pick it below, to see those patches."
    )
    km = view.kind_map()
    tags = view.atom_tags()
    order_by = (
        st.segmented_control(
            "Sort rows by",
            ["categories spanned", "peak activation", "atom"],
            default="categories spanned",
            key=key + "kind_sort",
        )
        or "categories spanned"
    )
    table = kind_table(km, tags)
    table = table.sort_values(
        {"categories spanned": ["categories", "peak"], "peak activation": ["peak"], "atom": ["atom"]}[order_by],
        ascending=order_by == "atom",
        kind="stable",
    )
    order = table.index.to_numpy()
    fig = charts.kind_heatmap_figure(km.mean[order], km.atoms[order], km.kinds, tags, height=160 + 18 * len(order))
    st.plotly_chart(
        fig, key=key + "kind_map", on_select=on_kind_click, selection_mode="points", config={"displayModeBar": False}
    )
    st.dataframe(
        table.drop(columns=["peak"]),
        hide_index=True,
        key=key + "kind_table",
        height=240,
        column_config={
            "atom": st.column_config.NumberColumn("atom", format="#%d"),
            "categories": st.column_config.NumberColumn("categories spanned", format="%d"),
            "top_kind": st.column_config.TextColumn("strongest kind"),
            "tag": st.column_config.TextColumn("tag"),
        },
    )
    kinds = [f"{c} / {d}" for c, d in km.kinds]
    atoms = [int(a) for a in km.atoms[order]]
    guards.keep_choice(key + "kind_atom", atoms)
    guards.keep_choice(key + "kind_kind", kinds)
    c1, c2 = st.columns(2)
    atom = c1.selectbox("Cell: atom", atoms, key=key + "kind_atom", format_func=lambda a: f"#{a}")
    kind = c2.selectbox("Cell: defect kind", kinds, key=key + "kind_kind")
    category, defect = km.kinds[kinds.index(kind)]
    tiles = view.kind_tiles(int(atom), category, defect)
    if not tiles:
        st.info(f"Atom #{atom} does not fire inside any {kind} defect. Pick a brighter cell.")
        return
    cols = st.columns(len(tiles))
    for col, tile in zip(cols, tiles):
        col.image(tile.crop, width="stretch", caption=tile.caption)


def kind_table(km, tags: dict[int, str]):
    """One row per atom: tag, categories spanned, strongest kind, peak (for sorting)."""
    best = km.mean.argmax(axis=1)
    return pd.DataFrame(
        {
            "atom": km.atoms.astype(int),
            "tag": [tags.get(int(a), "") for a in km.atoms],
            "categories": km.categories_spanned(),
            "top_kind": [" / ".join(km.kinds[i]) for i in best],
            "peak": km.mean.max(axis=1),
        }
    )


def on_kind_click() -> None:
    """A clicked heatmap cell -> the atom and kind pickers."""
    event = st.session_state.get(key + "kind_map")
    try:
        point = event["selection"]["points"][0]
    except (KeyError, TypeError, IndexError):
        return
    st.session_state[key + "kind_atom"] = int(str(point["y"]).split()[0].lstrip("#"))
    st.session_state[key + "kind_kind"] = str(point["x"])


if health.has(INDEX):
    with guards.guard("The atom x defect-kind map is not available for this run"):
        kind_section()
else:
    st.info(
        "The atom x defect-kind map needs the run's atom index: build it with `spg atoms --run DIR`.",
        icon=":material/info:",
    )
