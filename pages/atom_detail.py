"""Atom detail: one atom as SAE researchers read it (top patches, activation bands, random firing samples,
from the auxiliary and the target set; histograms; neighbours; cosine with each guide), its artefact
flags, and what the target maps and metrics become as its guide coefficient is scaled from 0 to 2x.

Every per-atom view reads the run's precomputed summaries (dashboard/atom_views.py). The URL
`/atom?run=RUN&atom=ID` opens one atom of one run."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import atom_figures, atom_views, charts, guards, pills, region_panel, state
from dashboard.map_figure import image_with_mask, patch_map_figure
from dashboard.page import run_page
from dashboard.run_view import Store
from dashboard.viewmodels.atom_detail import (
    activation_histogram,
    band_label,
    category_profile,
    neighbour_frame,
)
from dashboard.viewmodels.attribution import live_ranking
from dashboard.viewmodels.tables import ablation_frame, metrics_frame
from dashboard.viewmodels.targets import format_score, most_changed
from spg_core.atoms.ablation import logit_difference
from spg_core.atoms.build import INDEX
from spg_core.atoms.flags import FLAG_RULE
from spg_core.atoms.summaries import bin_edges, num_bands
from spg_core.render import PROBABILITY_SCALE, fitted_scale
from spg_core.report import METRIC_TITLES
from spg_core.runs import GUIDES_FILE as GUIDES
from spg_core.runs import PATCH_MAPS_FILE as PATCH_MAPS
from spg_core.runs import SCORES_FILE as SCORES

run_note = atom_views.apply_run_param()
view, health = run_page(
    "Atom detail", "What one dictionary atom fires on, and what the guide does without it", [GUIDES], "Atom detail"
)
if run_note:
    st.warning(run_note, icon=":material/link_off:")
key = f"{view.name}::atom::"
SETS = {"Auxiliary set (training side)": "aux", "Target set (evaluated)": "target"}
FACTORS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0]


def open_atom(atom: int) -> None:
    """on_click of a neighbour button: the pick below is seeded from ATOM_KEY on the rerun."""
    st.session_state[state.ATOM_KEY] = int(atom)


def pick_atom(ranking: dict[str, list[dict]], labels: dict[int, str], width: int) -> int:
    """Live atoms of both guides, anomaly first (the page opens on the anomaly guide's top live atom);
    any other atom id asked for (URL, Dictionary, a neighbour) is added to the options."""
    live = live_ranking(ranking, {a for a, t in labels.items() if t == "dead"})
    options = list(dict.fromkeys([a["atom"] for a in live["anomaly"]] + [a["atom"] for a in live["normal"]]))
    wanted = st.session_state.get(state.ATOM_KEY)
    if isinstance(wanted, int) and 0 <= wanted < width and wanted not in options:
        options.append(wanted)
    if not options:
        options = sorted({a["atom"] for g in ranking.values() for a in g})
    st.session_state[key + "pick"] = wanted if wanted in options else options[0]

    def remember() -> None:
        st.session_state[state.ATOM_KEY] = st.session_state[key + "pick"]

    return int(
        st.selectbox(
            "Atom",
            options,
            key=key + "pick",
            on_change=remember,
            format_func=lambda a: f"#{a}" + (f" · {labels[a]}" if labels.get(a) else ""),
        )
    )


def summary(atom: int, ranking: dict[str, list[dict]], stats, cosines: dict[str, np.ndarray]) -> list[str]:
    """The atom's tag, flags and cards (its weight in each guide, statistics); returns its guides."""
    coef = {g: next((a for a in ranking[g] if a["atom"] == atom), None) for g in ("anomaly", "normal")}
    row = stats[stats["atom"] == atom].iloc[0] if stats is not None and (stats["atom"] == atom).any() else None
    if row is not None:
        flags = row.get("flags", "")
        badges = pills.pill(str(row["tag"]), "neutral")
        if isinstance(flags, str) and flags:
            badges += " " + pills.pill(atom_views.flag_text(flags), "FN")
        if isinstance(row.get("labels"), str) and row["labels"]:
            badges += " " + pills.pill(row["labels"], "neutral")
        st.markdown(f"#### Atom #{atom} {badges}", unsafe_allow_html=True)
        if isinstance(flags, str) and flags:
            st.warning(
                f"**Likely artefact ({flags.replace(',', ', ')})**: {row['border_share']:.0%} of its mass on the "
                f"{row.get('border_band') or 'ring'} border band, "
                f"mass on its top 5% grid cells {row['position_share']:.0%}, fires on "
                f"{row['image_share']:.0%} of auxiliary images, mean pixel std of its patches "
                f"{row.get('pixel_std', float('nan')):.3f}.\n\nRule: {FLAG_RULE}",
                icon=":material/flag:",
            )
    cols = st.columns(5)
    for col, guide in zip(cols, ("anomaly", "normal")):
        entry = coef[guide]
        col.metric(
            f"{guide.capitalize()} guide",
            "inactive" if entry is None else f"{100 * entry['share']:.1f}%",
            help="the atom's share of the guide's coefficient mass",
            border=True,
        )
    if row is not None:
        cols[2].metric("Fires on", f"{100 * row['frequency']:.2g}%", border=True, help="share of auxiliary patches")
        lift = row["lift"]
        cols[3].metric(
            "In-defect lift",
            "n/a" if lift != lift else f"{lift:.1f}x",
            border=True,
            help="share of its activation inside defect masks, over the auxiliary base rate",
        )
        share = row["top_category_share"]
        cols[4].metric(
            f"Top category: {row['top_category']}",
            "n/a" if share != share else f"{100 * share:.0f}%",
            border=True,
            help="share of its category profile (mean activation per category) in its top category",
        )
    c1, c2, _ = st.columns([1, 1, 3])
    for col, guide in ((c1, "anomaly"), (c2, "normal")):
        col.metric(
            f"Cosine with the {guide} guide",
            f"{float(cosines[guide][atom]):+.2f}",
            help="cosine between the atom's decoder direction and the guide direction g = D c",
        )
    return [g for g in ("anomaly", "normal") if coef[g] is not None]


def tile_grid(tiles: list, per_row: int = 6) -> None:
    for start in range(0, len(tiles), per_row):
        for col, tile in zip(st.columns(per_row), tiles[start : start + per_row]):
            col.image(tile.crop, width="stretch", caption=tile.caption, output_format="PNG")


def aux_top_patches(atom: int, index) -> None:
    st.markdown("**Top-activating patches** (crop, and the atom over the whole image on one scale per atom)")
    count = st.select_slider("Patches", [3, 6, 9, 12, 15], value=6, key=key + "count")
    tiles = view.atom_tiles(atom, count)
    if not tiles:
        st.info("This atom never fires on the auxiliary set (a dead atom): it has no patches to show.")
        return
    for start in range(0, len(tiles), 3):
        for col, tile in zip(st.columns(3), tiles[start : start + 3]):
            with col, st.container(border=True):
                a, b = st.columns(2, gap="small")
                a.image(tile.crop, width="stretch", output_format="PNG")
                b.image(tile.heat, width="stretch", output_format="PNG")
                st.caption(tile.caption)
    entries = index.entries(atom)[: len(tiles)]
    pick_col, open_col = st.columns([2, 1], vertical_alignment="bottom")
    pick = pick_col.selectbox(
        "What else fires around one of these patches?",
        range(len(entries)),
        key=key + f"region_pick_{atom}",  # one widget per atom: its captions are this atom's
        format_func=lambda i: f"{i + 1}. {tiles[i].caption}",
    )
    if open_col.button("Open its image in the region view", icon=":material/select_all:", key=key + "open_region"):
        region_panel.open_aux_region(
            view.name, entries[pick]["image"], entries[pick]["patch"], tuple(index.meta["grid"])
        )


def samples(atom: int, which: str, summaries) -> None:
    """Activation bands (a few patches each) and random firing patches of one set."""
    s = summaries.sets[which]
    edges = summaries.edges[atom].numpy()
    for band in reversed(range(num_bands())):
        tiles = atom_views.sample_tiles(view, which, atom, band, 3)
        st.markdown(f"*{band_label(band, edges)}*" + ("" if tiles else ": no patch of this set here"))
        tile_grid(tiles)
    tiles = atom_views.sample_tiles(view, which, atom, num_bands(), 6)
    fired = int(s.hist[atom].sum())
    st.markdown(f"**Random firing patches** (uniform over the {fired} patches of this set where it fires)")
    if tiles:
        tile_grid(tiles)
    else:
        st.caption("It fires on none.")


def patch_views(atom: int, index, summaries) -> None:
    st.subheader("Patches")
    # one set drawn at a time (tabs would draw both on every rerun: twice the pictures per atom switch)
    choice = st.segmented_control(
        "Patches from", list(SETS), default=next(iter(SETS)), key=key + "set", label_visibility="collapsed"
    )
    if SETS.get(choice or "", "aux") == "aux":
        if index is not None:
            aux_top_patches(atom, index)
        samples(atom, "aux", summaries)
    else:
        if "target" not in summaries.sets:
            st.info("This run had no target token store when its summaries were built.")
            return
        top = atom_views.sample_tiles(view, "target", atom, -1, 6)
        st.markdown("**Top-activating target patches**")
        if top:
            tile_grid(top)
        else:
            st.caption("It fires on no target patch.")
        samples(atom, "target", summaries)


def histograms(atom: int, index, summaries, stats) -> None:
    left, mid, right = st.columns(3)
    if index is not None:
        left.plotly_chart(
            charts.category_bar_figure(category_profile(index, atom), "Mean activation per auxiliary category"),
            key=key + "cats",
            config={"displayModeBar": False},
        )
    edges = bin_edges()
    sets = {
        name: activation_histogram(summaries.sets[which].hist[atom].numpy(), edges)
        for which, name in (("aux", "auxiliary"), ("target", "target"))
        if which in summaries.sets
    }
    mid.plotly_chart(atom_figures.activation_figure(sets), key=key + "hist", config={"displayModeBar": False})
    grid = tuple(summaries.meta["grid"])
    right.plotly_chart(
        atom_figures.position_figure(summaries.position_mass[atom].numpy(), grid),
        key=key + "grid",
        config={"displayModeBar": False},
    )
    if stats is not None and stats.attrs.get("rule"):
        with st.expander("How tags and flags are assigned"):
            st.write(stats.attrs["rule"])
            st.write(FLAG_RULE)


def neighbours(atom: int, summaries, labels: dict[int, str]) -> None:
    st.subheader("Neighbours")
    st.caption("Click one to open it.")
    left, right = st.columns(2)
    for col, ids, values, name, prefix in (
        (left, summaries.coact_atoms, summaries.coact_jaccard, "Fire on the same patches (Jaccard)", "co"),
        (right, summaries.decoder_atoms, summaries.decoder_cosine, "Closest decoder directions (cosine)", "dec"),
    ):
        frame = neighbour_frame(ids[atom].numpy(), values[atom].numpy(), "score", labels)
        with col:
            st.markdown(f"**{name}**")
            if frame.empty:
                st.caption("None: the atom never fires.")
            for row in frame.itertuples():
                st.button(
                    f"#{row.atom} · {row.score:.2f}" + (f" · {row.tag}" if row.tag else ""),
                    key=key + f"{prefix}_{row.atom}",
                    on_click=open_atom,
                    args=(row.atom,),
                    width="stretch",
                )


def steering(atom: int, guides: list[str]) -> None:
    """Scale the atom's coefficient in one guide (0: removed, 2x) and recompute maps and metrics."""
    st.subheader("What if the guide weighted it less, or more?")
    if not guides:
        st.info("Neither guide weights this atom, so scaling it changes nothing.")
        return
    if not health.has(PATCH_MAPS, SCORES):
        st.info("This run has no target maps yet, so there is nothing to recompute.")
        return
    c1, c2 = st.columns([1, 2], vertical_alignment="center")
    guide = c1.segmented_control("Guide", guides, default=guides[0], key=key + f"guide_{atom}") or guides[0]
    factor = c2.select_slider(
        f"Scale atom #{atom}'s coefficient in the {guide} guide (0 = remove it)",
        FACTORS,
        value=1.0,
        format_func=lambda f: f"{f:g}x",
        key=key + f"scale_{atom}_{guide}",
    )
    if factor == 1.0:
        st.caption("Move the slider to recompute every target map, score and metric with the atom scaled.")
        return
    before = view.ablation(None, guide)
    after = atom_views.steered(view, atom, guide, float(factor))
    ablation_metrics(before.metrics, after.metrics)
    ablation_maps(before, after, f"at {factor:g}x")


def ablation_metrics(before: dict, after: dict) -> None:
    """Mean metrics after the edit (change against the run as trained), then per category."""
    mean_before = metrics_frame(before).loc["mean"]
    mean_after = metrics_frame(after).loc["mean"]
    pills.metric_cards(mean_after.to_dict(), (mean_after - mean_before).to_dict())
    frame = ablation_frame(before, after)
    metric = (
        st.segmented_control(
            "Per category", list(METRIC_TITLES.values()), default="Image AUROC", key=key + "abl_metric"
        )
        or "Image AUROC"
    )
    st.dataframe(
        frame[frame["metric"] == metric].drop(columns="metric"),
        hide_index=True,
        key=key + "abl_table",
        column_config={
            c: st.column_config.NumberColumn(c, format="%+.1f" if c == "change" else "%.1f")
            for c in ("before", "after", "change")
        },
    )


def ablation_maps(before, after, what: str) -> None:
    """One target image's map before and after on the run's fitted scale, and their difference."""
    target = view.target_outputs()
    changed = most_changed(before.scores.numpy(), after.scores.numpy())
    guards.keep_choice(key + "abl_image", changed)

    def label(i: int) -> str:
        row = target.rows[i]
        scores = f"{format_score(before.scores[i])} -> {format_score(after.scores[i])}"
        return f"{row['category']}/{row['defect']} #{i}: {scores}"

    pick = st.selectbox("Target image (largest score change first)", changed, key=key + "abl_image", format_func=label)
    record = None
    with guards.guard("The run's fitted colour scale is not available; maps use 0-1"):
        record = view.threshold()
    scale = fitted_scale(record["pixel_scale"]) if record else PROBABILITY_SCALE
    image = state.image_at(target.rows[pick]["image_path"], target.image_size)
    background = image_with_mask(image, view.mask(Store.TARGET, pick))
    cols = st.columns(3)
    for col, result, title in zip(cols, (before, after), ("As trained", f"Edited ({what})")):
        fig = patch_map_figure(
            background,
            result.probs[pick].reshape(target.grid).numpy(),
            opacity=0.55,
            scale=scale,
            title=f"{title}: score {format_score(result.scores[pick])}",
            height=360,
            colorbar=False,
        )
        col.plotly_chart(fig, key=key + f"abl_{title[:2]}", config={"displayModeBar": False})
    diff = logit_difference(before.probs[pick], after.probs[pick]).reshape(target.grid).numpy()
    cols[2].plotly_chart(
        atom_figures.difference_figure(diff, "Difference (edited - trained)"),
        key=key + "abl_diff",
        config={"displayModeBar": False},
    )
    st.caption(f"Maps on {scale.legend}. Difference in log-odds per patch: red more anomalous after the edit.")


with guards.guard("This run's atoms cannot be shown"):
    ranking = view.atom_ranking()
    if not ranking["anomaly"] and not ranking["normal"]:
        st.info("Neither guide has an active atom.")
        st.stop()
    index = stats = summaries = None
    if health.has(INDEX):
        with guards.guard("The atom index or its summaries cannot be read, so patches and histograms are left out"):
            summaries = atom_views.summaries(view)
            index, stats = view.atoms()
    else:
        st.info(
            "This run has no atom index, so patches, histograms and neighbours are missing. "
            "Build it with `spg atoms --run DIR`.",
            icon=":material/info:",
        )
    width = index.width if index is not None else view.predictor().sae.width
    atom_note = atom_views.apply_atom_param(width)
    if atom_note:
        st.warning(atom_note, icon=":material/link_off:")
    labels = view.atom_tags()
    atom = pick_atom(ranking, labels, width)
    atom_views.write_params(view.name, atom)
    guides = summary(atom, ranking, stats, atom_views.guide_cosines(view))
    if summaries is not None:
        patch_views(atom, index, summaries)
        histograms(atom, index, summaries, stats)
        neighbours(atom, summaries, labels)
    steering(atom, guides)
