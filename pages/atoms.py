"""Atoms: the guides' active atoms ranked by coefficient, with tags and statistics; open one."""

from __future__ import annotations

import streamlit as st

from dashboard import nav, state, widgets
from dashboard.viewmodels.attribution import atom_table
from spg_core.atoms.build import INDEX
from spg_core.runs import GUIDES

run = widgets.require_run()
widgets.page_header("Atoms", "The dictionary atoms each guide is built from, largest coefficient first", run)
health = widgets.run_health(run)
widgets.require(health, [GUIDES], "Atom ranking")
sig = state.signature(run)
key = f"{run.name}::atoms::"

with widgets.guard("The atoms of this run cannot be ranked"):
    ranking = state.atom_ranking(str(run), sig)
    stats = None
    if not health.has(INDEX):
        st.info("This run has no atom index yet, so tags and statistics are missing. "
                "Build it with `spg atoms --run DIR`.", icon=":material/info:")
    else:
        with widgets.guard("The atom index cannot be read, so tags and statistics are left out"):
            stats = state.atoms(str(run), sig)[1]
    table = atom_table(ranking, stats)

    c1, c2, c3 = st.columns(3)
    c1.metric("Active anomaly atoms", len(ranking["anomaly"]), border=True)
    c2.metric("Active normal atoms", len(ranking["normal"]), border=True)
    c3.metric("In both guides", len({a["atom"] for a in ranking["anomaly"]} & {a["atom"] for a in ranking["normal"]}),
              border=True)

    top_n = st.slider("Atoms per chart", 5, 40, 15, key=key + "top_n")
    left, right = st.columns(2)
    for col, guide, colour in ((left, "anomaly", "#E6461E"), (right, "normal", "#1E3C96")):
        part = table[table["guide"] == guide].head(top_n)
        with col:
            if part.empty:
                st.info(f"The {guide} guide has no active atoms.")
            else:
                fig = widgets.atom_bar_figure(part, "share", f"{guide.capitalize()} guide, largest first", colour,
                                              height=120 + 22 * len(part), xtitle="share of the guide (%)")
                st.plotly_chart(fig, key=key + f"bar_{guide}", config={"displayModeBar": False})

    st.subheader("All active atoms")
    shown = st.segmented_control("Guide", ["both", "anomaly", "normal"], default="both", key=key + "guide")
    view = table if shown in (None, "both") else table[table["guide"] == shown]
    st.dataframe(view, hide_index=True, key=key + "table", height=360,
                 column_config={"share": st.column_config.ProgressColumn("share (%)", format="%.1f", min_value=0,
                                                                         max_value=float(table["share"].max() or 1)),
                                "coef": st.column_config.NumberColumn("coef", format="%.4f")})

    options = view["atom"].drop_duplicates().tolist()
    if options:
        c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
        tags = state.atom_tags(str(run), sig)
        widgets.keep_choice(key + "pick", options)
        atom = c1.selectbox("Atom", options, key=key + "pick",
                            format_func=lambda a: f"#{a}" + (f" · {tags[a]}" if tags.get(a) else ""))
        if c2.button("Open atom detail", type="primary", icon=":material/frame_inspect:", key=key + "open"):
            st.session_state[state.ATOM_KEY] = int(atom)
            nav.open_page("atom_detail.py")
