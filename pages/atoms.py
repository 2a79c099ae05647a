"""Atoms: the guides' active atoms ranked by coefficient, with tags and statistics; open one."""

from __future__ import annotations

import streamlit as st

from dashboard import atom_views, charts, events, glossary, guards, nav, sticky
from dashboard.page import run_page
from dashboard.viewmodels.attribution import atom_table, atom_table_columns, dead_atoms, live_ranking
from dashboard.viewmodels.kinds import PER_PAGE, SORTS, kind_table, page_count, relevant_rows
from spg_core.atoms.build import INDEX
from spg_core.runs import GUIDES_FILE as GUIDES

view, health = run_page(
    "Atoms", "The dictionary atoms each guide is built from, largest coefficient first", [GUIDES], "Atom ranking"
)
key = f"{view.name}::atoms::"
TERM_OF = {"frequency": "fires on", "lift": "in-defect lift"}  # table column -> glossary term

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
        c: st.column_config.NumberColumn(
            spec["label"], format=spec["format"], width="medium", help=glossary.TERMS.get(TERM_OF.get(c, ""))
        )
        for c, spec in atom_table_columns().items()
        if c in listed.columns
    }
    config["share"] = st.column_config.ProgressColumn(
        "share of guide (%)",
        format="%.1f",
        min_value=0,
        max_value=float(table["share"].max() or 1),
        help=glossary.say("share of guide"),
    )
    st.dataframe(listed, hide_index=True, key=key + "table", height=360, column_config=config)
    atom_views.flag_note(dict(zip(table["atom"], table["tag"])), table["atom"])

    options = listed["atom"].drop_duplicates().tolist()
    if options:
        c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
        tags = view.atom_tags()
        guards.keep_choice(key + "pick", options)
        atom = c1.selectbox(
            "Atom", options, key=key + "pick", format_func=lambda a: f"#{a}" + (f" · {tags[a]}" if tags.get(a) else "")
        )
        if c2.button("Open atom detail", type="primary", icon=":material/frame_inspect:", key=key + "open"):
            nav.open_atom(view.name, atom)


def kind_section() -> None:
    """Atom x defect-kind heatmap of the most relevant atoms, a page at a time; a cell (clicked or picked)
    shows its patches beside the heatmap."""
    st.subheader("Atoms x auxiliary defect kinds")
    km = view.kind_map()
    tags = view.atom_tags()
    table = kind_table(km, tags)
    sort_col, page_col = st.columns([3, 1], vertical_alignment="bottom")
    order_by = sort_col.segmented_control(
        "Sort rows by", list(SORTS), key=sticky.keep(key + "kind_sort", next(iter(SORTS)))
    ) or next(iter(SORTS))
    pages = page_count(table)
    page = page_col.number_input(
        f"Page (of {pages}, {PER_PAGE} atoms each)",
        min_value=1,
        max_value=pages,
        step=1,
        key=sticky.keep(key + "kind_page", 1),
        help="atoms ranked by relevance: their strongest mean activation inside any defect kind",
    )
    shown = relevant_rows(table, order_by, int(page) - 1)
    st.caption(
        f"The {len(shown)} most relevant live guide atoms (page {int(page)} of {pages}; relevance = the atom's "
        "strongest mean activation inside one auxiliary defect kind's masks), sorted by "
        f"**{order_by}**. A class-general atom's row spans several categories; a class-specific one stays in "
        "one category's columns. Click a cell, or pick it on the right, to see its patches."
    )
    atoms = [int(a) for a in shown["atom"]]
    kinds = [f"{c} / {d}" for c, d in km.kinds]
    heat_col, cell_col = st.columns([2.2, 1], gap="medium")
    with heat_col:
        fig = charts.kind_heatmap_figure(
            km.mean[shown["row"].to_numpy()], atoms, km.kinds, tags, height=200 + 22 * len(atoms)
        )
        st.plotly_chart(
            fig,
            key=key + "kind_map",
            on_select=on_kind_click,
            selection_mode="points",
            config={"displayModeBar": False},
        )
    with cell_col:
        guards.keep_choice(sticky.keep(key + "kind_atom"), atoms)
        guards.keep_choice(sticky.keep(key + "kind_kind"), kinds)
        atom = st.selectbox("Cell: atom", atoms, key=key + "kind_atom", format_func=lambda a: f"#{a}")
        kind = st.selectbox("Cell: defect kind", kinds, key=key + "kind_kind")
        category, defect = km.kinds[kinds.index(kind)]
        tiles = view.kind_tiles(int(atom), category, defect)
        if not tiles:
            st.info(f"Atom #{atom} does not fire inside any {kind} defect. Pick a brighter cell.")
        for start in range(0, len(tiles), 2):
            for col, tile in zip(st.columns(2), tiles[start : start + 2]):
                col.image(tile.crop, width="stretch", caption=tile.caption)
    atom_views.flag_note(tags, atoms)
    st.dataframe(
        shown.drop(columns=["peak", "row"]),
        hide_index=True,
        key=key + "kind_table",
        height=240,
        column_config={
            "atom": st.column_config.NumberColumn("atom", format="#%d"),
            "categories": st.column_config.NumberColumn(
                "categories spanned", format="%d", help=glossary.say("categories spanned")
            ),
            "top_kind": st.column_config.TextColumn("strongest kind"),
            "tag": st.column_config.TextColumn("tag"),
        },
    )


def on_kind_click() -> None:
    """A clicked heatmap cell -> the atom and kind pickers."""
    cell = events.clicked_cell(st.session_state.get(key + "kind_map"))
    if cell is not None:
        sticky.put(key + "kind_atom", int(str(cell[0]).split()[0].lstrip("#")))
        sticky.put(key + "kind_kind", str(cell[1]))


if health.has(INDEX):
    with guards.guard("The atom x defect-kind map is not available for this run"):
        kind_section()
else:
    st.info(
        "The atom x defect-kind map needs the run's atom index: build it with `spg atoms --run DIR`.",
        icon=":material/info:",
    )
