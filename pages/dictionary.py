"""Dictionary: every atom of the run's SAE at once: firing density, dead and alive counts, frequency
against mean activation coloured by guide weight, artefact flags, a searchable table; open any atom,
or drop every flagged atom from the guides and see the metrics change."""

from __future__ import annotations

import streamlit as st

from dashboard import atom_figures, atom_views, guards, nav, pills, state
from dashboard.page import run_page
from dashboard.viewmodels.dictionary import GUIDE_CLASSES, density_histogram, filter_atoms
from dashboard.viewmodels.tables import ablation_frame, metrics_frame
from spg_core.atoms.build import INDEX
from spg_core.atoms.flags import FLAG_RULE, FLAGS
from spg_core.atoms.stats import TAGS
from spg_core.runs import GUIDES_FILE as GUIDES
from spg_core.runs import PATCH_MAPS_FILE as PATCH_MAPS

view, health = run_page(
    "Dictionary",
    "Every atom of the run's dictionary: how often it fires, how strongly, and flags",
    [GUIDES, INDEX],
    "The dictionary view",
)
key = f"{view.name}::dict::"


def open_atom(atom: int) -> None:
    st.session_state[state.ATOM_KEY] = int(atom)
    nav.open_page("atom_detail.py")


def on_scatter_click() -> None:
    """A clicked point -> Atom detail on that atom (customdata[0] is its id)."""
    event = st.session_state.get(key + "scatter")
    try:
        atom = int(event["selection"]["points"][0]["customdata"][0])
    except (KeyError, TypeError, IndexError, ValueError):
        return
    st.session_state[key + "clicked"] = atom


def overview(table) -> None:
    live = int((table["frequency"] > 0).sum())
    flagged = int((table["flags"] != "").sum())
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Atoms", len(table), border=True, help="the dictionary's width M")
    c2.metric("Alive", live, border=True, help="fire on at least one auxiliary patch")
    c3.metric("Dead", len(table) - live, border=True, help="never fire on the auxiliary set")
    c4.metric("Flagged as likely artefacts", flagged, border=True, help=FLAG_RULE)
    counts, edges = density_histogram(table)
    st.plotly_chart(
        atom_figures.density_figure(counts, edges, len(table) - live),
        key=key + "density",
        config={"displayModeBar": False},
    )
    st.plotly_chart(
        atom_figures.scatter_figure(table),
        key=key + "scatter",
        on_select=on_scatter_click,
        selection_mode="points",
        config={"displayModeBar": False},
    )
    clicked = st.session_state.pop(key + "clicked", None)
    if clicked is not None:
        open_atom(clicked)


def search(table) -> None:
    st.subheader("Find atoms")
    c1, c2, c3, c4, c5 = st.columns([2, 1, 1, 1, 1])
    query = c1.text_input("Search", key=key + "query", placeholder="ids (12 56) or words (border, screw)")
    tags = c2.multiselect("Tag", list(TAGS), key=key + "tags")
    flag = c3.selectbox("Flag", ["any", "flagged", "not flagged", *FLAGS], key=key + "flag")
    cats = sorted(c for c in table["top_category"].unique() if c)
    categories = c4.multiselect("Top category", cats, key=key + "cats")
    guides = c5.multiselect("Guide", list(GUIDE_CLASSES), key=key + "guides")
    found = filter_atoms(table, query=query, tags=tags, flags=flag, categories=categories, guides=guides)
    found = found.sort_values(["anomaly_share", "normal_share", "frequency"], ascending=False, kind="stable")
    st.caption(f"{len(found)} of {len(table)} atoms. Flags: {FLAG_RULE}")
    shown = found.assign(
        flags=found["flags"].map(lambda f: atom_views.flag_text(f)), frequency=100 * found["frequency"]
    )
    st.dataframe(
        shown.drop(columns=["log10_frequency"]),
        hide_index=True,
        key=key + "table",
        height=380,
        column_config={
            "atom": st.column_config.NumberColumn("atom", format="#%d"),
            "frequency": st.column_config.NumberColumn("fires on (% of aux patches)", format="%.3g"),
            "mean_activation": st.column_config.NumberColumn("mean activation", format="%.3g"),
            "anomaly_share": st.column_config.NumberColumn("anomaly guide (%)", format="%.1f"),
            "normal_share": st.column_config.NumberColumn("normal guide (%)", format="%.1f"),
            "flags": st.column_config.TextColumn("flags"),
        },
    )
    options = found["atom"].astype(int).tolist()
    if options:
        guards.keep_choice(key + "pick", options)
        c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
        atom = c1.selectbox("Atom", options, key=key + "pick", format_func=lambda a: f"#{a}")
        if c2.button("Open atom detail", type="primary", icon=":material/frame_inspect:", key=key + "open"):
            open_atom(atom)


DROP_FROM = {"the anomaly guide": ("anomaly", "both"), "both guides": ("anomaly", "normal", "both")}


def drop_flagged(table) -> None:
    """Drop every flagged atom from the anomaly guide (or from both guides) at once; the metrics before and after."""
    st.subheader("Drop every flagged atom")
    choice = st.segmented_control("From", list(DROP_FROM), default="the anomaly guide", key=key + "drop_from")
    where = choice or "the anomaly guide"
    st.caption(
        "A flagged atom of the normal guide can be what explains a clean image border away: dropping it "
        "from both guides can make every border look anomalous (measured on a magnetic_tile -> bottle run: "
        "pixel AUROC 0.717 -> 0.545 from both guides, 0.709 from the anomaly guide alone; benchmarks/RESULTS.md)."
    )
    weighted = table[(table["flags"] != "") & table["guide"].isin(DROP_FROM[where])]
    if weighted.empty:
        st.info(f"No flagged atom carries weight in {where}: nothing to drop.")
        return
    if not health.has(PATCH_MAPS):
        st.info("This run has no target maps yet, so there is nothing to recompute.")
        return
    atoms = tuple(int(a) for a in weighted["atom"])
    names = ", ".join(f"#{a}" for a in atoms)
    if not st.toggle(f"Remove the {len(atoms)} flagged atoms ({names}) from {where}", key=key + "drop"):
        st.caption("Switch it on to recompute every target map, score and metric without them.")
        return
    before = view.ablation(None, "anomaly")
    after = atom_views.dropped(view, atoms, "anomaly" if where == "the anomaly guide" else "both")
    mean_before, mean_after = metrics_frame(before.metrics).loc["mean"], metrics_frame(after.metrics).loc["mean"]
    pills.metric_cards(mean_after.to_dict(), (mean_after - mean_before).to_dict())
    frame = ablation_frame(before.metrics, after.metrics)
    st.dataframe(frame[frame["category"] == "mean"], hide_index=True, key=key + "drop_table")


with guards.guard("The dictionary of this run cannot be shown"):
    table = atom_views.dictionary_table(view)
    overview(table)
    search(table)
    drop_flagged(table)
