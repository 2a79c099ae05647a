"""Atom detail: an atom's top auxiliary patches, its category and activation histograms, its tag,
and what the target maps and metrics become without it."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, guards, pills, region_panel, state
from dashboard.map_figure import image_with_mask, patch_map_figure
from dashboard.page import run_page
from dashboard.run_view import Store
from dashboard.viewmodels.atom_detail import category_profile
from dashboard.viewmodels.attribution import live_ranking
from dashboard.viewmodels.tables import ablation_frame, metrics_frame
from dashboard.viewmodels.targets import format_score, most_changed
from spg_core.atoms.build import INDEX
from spg_core.report import METRIC_TITLES
from spg_core.runs import GUIDES_FILE as GUIDES
from spg_core.runs import PATCH_MAPS_FILE as PATCH_MAPS
from spg_core.runs import SCORES_FILE as SCORES

view, health = run_page(
    "Atom detail", "What one dictionary atom fires on, and what the guide loses without it", [GUIDES], "Atom detail"
)
key = f"{view.name}::atom::"


def pick_atom(ranking: dict[str, list[dict]], tags: dict[int, str]) -> int:
    """Live atoms of both guides, anomaly first, so the page opens on the anomaly guide's top live atom
    (older runs' guides may weight dead atoms). The choice lives in session_state[ATOM_KEY] (other
    pages set it to open an atom here, a dead one included); the selectbox is seeded from it."""
    live = live_ranking(ranking, {a for a, t in tags.items() if t == "dead"})
    options = list(dict.fromkeys([a["atom"] for a in live["anomaly"]] + [a["atom"] for a in live["normal"]]))
    wanted = st.session_state.get(state.ATOM_KEY)
    every = {a["atom"] for g in ranking.values() for a in g}
    if wanted in every and wanted not in options:  # asked for by number: show it, dead or not
        options.append(wanted)
    if not options:
        options = sorted(every)
    st.session_state[key + "pick"] = wanted if wanted in options else options[0]

    def remember() -> None:
        st.session_state[state.ATOM_KEY] = st.session_state[key + "pick"]

    return int(
        st.selectbox(
            "Atom",
            options,
            key=key + "pick",
            on_change=remember,
            format_func=lambda a: f"#{a}" + (f" · {tags[a]}" if tags.get(a) else ""),
        )
    )


def summary(atom: int, ranking: dict[str, list[dict]], stats) -> list[str]:
    """The atom's tag and cards (its weight in each guide, statistics); returns its guides."""
    coef = {g: next((a for a in ranking[g] if a["atom"] == atom), None) for g in ("anomaly", "normal")}
    row = stats[stats["atom"] == atom].iloc[0] if stats is not None and (stats["atom"] == atom).any() else None
    if row is not None:
        tag = str(row["tag"])
        st.markdown(f"#### Atom #{atom} {pills.pill(tag, 'neutral')}", unsafe_allow_html=True)
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
        cols[2].metric(
            "Fires on",
            f"{100 * row['frequency']:.2g}%",
            border=True,
            help="share of auxiliary patches where its activation is above zero",
        )
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
    return [g for g in ("anomaly", "normal") if coef[g] is not None]


def top_patches(atom: int) -> None:
    st.subheader("Top-activating auxiliary patches")
    st.caption(
        "Each pair: the patch with its surroundings (boxed red when it overlaps a defect mask) and "
        "the atom's activation over the whole image, on one scale per atom."
    )
    count = st.select_slider("Patches", [3, 6, 9, 12, 15], value=9, key=key + "count")
    tiles = view.atom_tiles(atom, count)
    if not tiles:
        st.info(
            "This atom never fires on the auxiliary set (a dead atom): it has no patches to show. "
            "Pick a live atom above."
        )
        return
    per_row = 3
    for start in range(0, len(tiles), per_row):
        cols = st.columns(per_row)
        for col, tile in zip(cols, tiles[start : start + per_row]):
            with col, st.container(border=True):
                a, b = st.columns(2, gap="small")
                a.image(tile.crop, width="stretch", output_format="PNG")
                b.image(tile.heat, width="stretch", output_format="PNG")
                st.caption(tile.caption)
    index, _ = view.atoms()
    entries = index.entries(atom)[: len(tiles)]
    pick_col, open_col = st.columns([2, 1], vertical_alignment="bottom")
    pick = pick_col.selectbox(
        "What else fires around one of these patches?",
        range(len(entries)),
        key=key + "region_pick",
        format_func=lambda i: f"{i + 1}. {tiles[i].caption}",
    )
    if open_col.button("Open its image in the region view", icon=":material/select_all:", key=key + "open_region"):
        region_panel.open_aux_region(
            view.name, entries[pick]["image"], entries[pick]["patch"], tuple(index.meta["grid"])
        )


def histograms(atom: int, index, stats) -> None:
    left, right = st.columns(2)
    profile = category_profile(index, atom)
    left.plotly_chart(
        charts.category_bar_figure(profile, "Category histogram: mean activation per category"),
        key=key + "cats",
        config={"displayModeBar": False},
    )
    values, encoded = view.atom_activations(atom)
    if len(values):
        right.plotly_chart(
            charts.histogram_figure(values, f"Activation histogram ({len(values)} firing patches)", "activation s_j"),
            key=key + "hist",
            config={"displayModeBar": False},
        )
        total = index.meta.get("num_images", encoded)
        right.caption(
            f"Over {encoded} of {total} auxiliary images"
            + ("" if encoded >= total else " (an even sample plus the atom's top images)")
            + "."
        )
    else:
        right.info("This atom never fires on the auxiliary set.")
    if stats is not None and stats.attrs.get("rule"):
        with st.expander("How tags are assigned"):
            st.write(stats.attrs["rule"])


def ablation(atom: int, guides: list[str]) -> None:
    """The what-if switch: remove the atom from one of its guides, recompute maps and metrics."""
    st.subheader("What if the guide did without it?")
    if not health.has(PATCH_MAPS, SCORES):
        st.info("This run has no target maps yet, so there is nothing to recompute.")
        return
    c1, c2 = st.columns([1, 2], vertical_alignment="center")
    guide = c1.segmented_control("Guide", guides, default=guides[0], key=key + f"guide_{atom}") or guides[0]
    removed = c2.toggle(f"Remove atom #{atom} from the {guide} guide", key=key + f"remove_{atom}_{guide}")
    if not removed:
        st.caption("Switch it on to recompute every target map, score and metric without this atom.")
        return
    before = view.ablation(None, guide)
    after = view.ablation(atom, guide)
    ablation_metrics(before.metrics, after.metrics)
    ablation_maps(before, after)


def ablation_metrics(before: dict, after: dict) -> None:
    """Mean metrics without the atom (change against the run as trained), then per category."""
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


def ablation_maps(before, after) -> None:
    """One target image's map with and without the atom (images whose score moved most first)."""
    target = view.target_outputs()
    changed = most_changed(before.scores.numpy(), after.scores.numpy())
    guards.keep_choice(key + "abl_image", changed)

    def label(i: int) -> str:
        row = target.rows[i]
        return (
            f"{row['category']}/{row['defect']} #{i}: {format_score(before.scores[i])} -> "
            f"{format_score(after.scores[i])}"
        )

    pick = st.selectbox("Target image (largest score change first)", changed, key=key + "abl_image", format_func=label)
    image = state.image_at(target.rows[pick]["image_path"], target.image_size)
    background = image_with_mask(image, view.mask(Store.TARGET, pick))
    for col, result, title, last in zip(st.columns(2), (before, after), ("With the atom", "Without it"), (False, True)):
        fig = patch_map_figure(
            background,
            result.probs[pick].reshape(target.grid).numpy(),
            opacity=0.55,
            title=f"{title}: score {format_score(result.scores[pick])}",
            height=380,
            colorbar=last,
        )
        col.plotly_chart(fig, key=key + ("abl_after" if last else "abl_before"), config={"displayModeBar": False})


with guards.guard("This run's atoms cannot be shown"):
    ranking = view.atom_ranking()
    tags = view.atom_tags()
    if not ranking["anomaly"] and not ranking["normal"]:
        st.info("Neither guide has an active atom.")
        st.stop()
    atom = pick_atom(ranking, tags)
    index = stats = None
    if health.has(INDEX):
        with guards.guard("The atom index cannot be read, so top patches and histograms are left out"):
            index, stats = view.atoms()
    else:
        st.info(
            "This run has no atom index, so top patches and histograms are missing. "
            "Build it with `spg atoms --run DIR`.",
            icon=":material/info:",
        )
    guides = summary(atom, ranking, stats)
    if index is not None:
        top_patches(atom)
        histograms(atom, index, stats)
    ablation(atom, guides)
