"""The atom views under AppTest on a tiny run: Dictionary, Atom detail's summaries, flags and URL."""

from __future__ import annotations

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from helpers.apptest_support import APP, PAGES, TIMEOUT, assert_clean, frame_with, open_app, texts
from helpers.tiny_data import TINY_RUN_ARGS, tiny_pair

from dashboard.viewmodels.dictionary import density_histogram, dictionary_table, filter_atoms
from spg_core import run_paths
from spg_core.atomic import read_json, write_json
from spg_core.atoms import Ablator, build_atoms, load_atoms, rank_atoms
from spg_core.atoms.ablation import logit_difference
from spg_core.atoms.build import ensure_summaries
from spg_core.atoms.stats import load_stats, save_stats
from spg_core.cli import main as spg_main
from spg_core.guides import GuideSet

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest


RUN, TWIN = "tiny", "tiny-twin"


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """A runs root of two copies of one tiny run (tiny_data: 32 atoms, a 4 x 4 grid; a minute on 2 busy
    cores), atoms built with the summaries, so these tests need no builtin run."""
    base = tmp_path_factory.mktemp("atom_views")
    aux, target = tiny_pair(base / "data")
    assert spg_main(["run", "--aux", aux, "--target", target, "--out", str(base / "runs" / RUN), *TINY_RUN_ARGS]) == 0
    build_atoms(base / "runs" / RUN, progress=False, device="cpu")
    shutil.copytree(base / "runs" / RUN, base / "runs" / TWIN)
    return base / "runs"


@pytest.fixture(scope="module")
def atoms_of(tiny_root):
    """(index, stats, summaries, ranking) of the tiny run, summaries built (or read) by the engine."""
    summaries = ensure_summaries(tiny_root / RUN)
    index, stats = load_atoms(tiny_root / RUN)
    pair, _ = GuideSet.load(str(tiny_root / RUN / "guides.safetensors"))
    return index, stats, summaries, rank_atoms(pair)


def _array(value) -> np.ndarray:
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata"} (plotly >= 6)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def chart(at: AppTest, title_start: str) -> dict:
    """The plotly spec whose title starts with `title_start`."""
    for c in at.get("plotly_chart"):
        spec = json.loads(c.proto.spec)
        if str(spec["layout"].get("title", {}).get("text", "")).startswith(title_start):
            return spec
    raise AssertionError(f"no chart titled {title_start!r}")


def test_dictionary_view_model_filters(atoms_of):
    index, stats, _, ranking = atoms_of
    table = dictionary_table(stats, ranking)
    assert len(table) == index.width
    assert set(table.loc[table["guide"] != "neither", "atom"]) == {a["atom"] for g in ranking.values() for a in g}
    counts, _ = density_histogram(table)
    assert counts.sum() == int((index.counts.fire_count > 0).sum())
    some = table["atom"].iloc[[3, 7]].tolist()
    assert filter_atoms(table, query=f"#{some[0]}, {some[1]}")["atom"].tolist() == some
    dead = filter_atoms(table, tags=["dead"])
    assert (dead["frequency"] == 0).all() and len(dead) == int((index.counts.fire_count == 0).sum())
    fake = table.assign(flags=["border" if i == 5 else "" for i in range(len(table))])
    assert filter_atoms(fake, flags="border")["atom"].tolist() == [int(table["atom"].iloc[5])]
    assert len(filter_atoms(fake, flags="not flagged")) == len(table) - 1


def test_dictionary_page_density_counts_equal_the_index(tiny_root, monkeypatch, atoms_of):
    index, _, _, _ = atoms_of
    at = open_app(tiny_root, monkeypatch, page="dictionary.py", run=RUN)
    assert at.title[0].value == "Dictionary"
    fire = index.counts.fire_count.numpy()
    live = fire > 0
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Alive"] == str(int(live.sum())) and metrics["Dead"] == str(int((~live).sum()))
    spec = chart(at, "Firing density")
    counts = _array(spec["data"][0]["y"])
    x = _array(spec["data"][0]["x"])
    width = _array(spec["data"][0]["width"])
    expected, _ = np.histogram(
        np.log10(fire[live] / index.counts.num_tokens), bins=np.append(x - width / 2, x[-1] + width[-1] / 2)
    )
    assert np.array_equal(counts, expected) and counts.sum() == live.sum()
    scatter = chart(at, "Frequency vs mean activation")
    shown = sorted(int(a) for trace in scatter["data"] for a, _ in trace["customdata"])
    assert shown == np.flatnonzero(live).tolist()  # every live atom is a point, no dead one


def test_dictionary_search_and_open(tiny_root, monkeypatch, atoms_of):
    _, _, _, ranking = atoms_of
    at = open_app(tiny_root, monkeypatch, page="dictionary.py", run=RUN)
    k = f"{RUN}::dict::"
    atom = ranking["normal"][0]["atom"]
    at.text_input(key=k + "query").set_value(str(atom)).run()
    table = frame_with(at, "atom", "frequency", "guide", "flags")
    assert table["atom"].tolist() == [atom]
    at.button(key=k + "open").click().run()
    assert_clean(at)
    assert at.title[0].value == "Atom detail"
    assert at.selectbox(key=f"{RUN}::atom::pick").value == atom


def test_atom_detail_bands_neighbours_and_steering(tiny_root, monkeypatch, atoms_of):
    _, _, summaries, ranking = atoms_of
    at = open_app(tiny_root, monkeypatch, page="atom_detail.py", run=RUN)
    assert_clean(at)
    k = f"{RUN}::atom::"
    atom = at.selectbox(key=k + "pick").value
    # every band's captions are values inside that band (the page shows 3 per band, one set at a time)
    edges = summaries.edges[atom].numpy()
    for which, label in (("aux", "Auxiliary set (training side)"), ("target", "Target set (evaluated)")):
        at.segmented_control(key=k + "set").set_value(label).run()
        captions = [i.proto.imgs[0].caption for i in at.image if i.proto.imgs and i.proto.imgs[0].caption]
        for band in range(len(edges) - 1):
            for s in summaries.sets[which].samples(atom, band)[:3]:
                assert edges[band] <= s["value"] < edges[band + 1]
                assert any(c.endswith(f"s={s['value']:.2f}") for c in captions)
    # the first co-activating neighbour button opens that atom
    first = int(summaries.coact_atoms[atom, 0])
    at.button(key=k + f"co_{first}").click().run()
    assert_clean(at)
    assert at.selectbox(key=k + "pick").value == first
    at.selectbox(key=k + "pick").set_value(atom).run()
    guide = "anomaly" if any(a["atom"] == atom for a in ranking["anomaly"]) else "normal"
    at.select_slider(key=k + f"scale_{atom}_{guide}").set_value(0.0).run()
    assert_clean(at)

    expected = Ablator(tiny_root / RUN, device="cpu").ablate(remove=[atom], guide=guide).metrics
    assert any(
        m.label == "Image AUROC" and m.value == f"{100 * expected['mean']['image_auroc']:.1f}%" for m in at.metric
    )
    assert "Difference (edited - trained)" in json.dumps(
        [json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")]
    )


def test_the_region_pick_caption_follows_the_atom(tiny_root, monkeypatch, atoms_of):
    index, _, _, ranking = atoms_of
    at = open_app(tiny_root, monkeypatch, page="atom_detail.py", run=RUN)
    k = f"{RUN}::atom::"
    first = at.selectbox(key=k + "pick").value
    second = next(a["atom"] for a in ranking["anomaly"] if a["atom"] != first and index.entries(a["atom"]))
    at.selectbox(key=k + "pick").set_value(second).run()
    box = at.selectbox(key=k + f"region_pick_{second}")
    value = index.entries(second)[0]["value"]
    assert box.options[0].endswith(f"s={value:.2f}")


def open_link(root, monkeypatch, **params: str) -> AppTest:
    """A fresh session that opens /atom?KEY=VALUE... (the app's first run lands on the home page)."""
    monkeypatch.setenv(run_paths.RUNS_ENV, str(root))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.run()
    for name, value in params.items():
        at.query_params[name] = value
    at.switch_page(str(PAGES / "atom_detail.py")).run()
    assert_clean(at)
    return at


def test_atom_url_opens_that_atom_of_that_run(tiny_root, monkeypatch, atoms_of):
    _, _, _, ranking = atoms_of
    atom = ranking["normal"][-1]["atom"]
    monkeypatch.setenv(run_paths.RUNS_ENV, str(tiny_root))
    first = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run().selectbox(key="run").value
    other = TWIN if first == RUN else RUN  # not the run a session starts on
    at = open_link(tiny_root, monkeypatch, run=other, atom=str(atom))
    assert at.selectbox(key="run").value == other
    assert at.selectbox(key=f"{other}::atom::pick").value == atom
    assert f"run **{other}**" in texts(at)


@pytest.mark.parametrize(
    ("params", "said"),
    [
        ({"run": RUN, "atom": "99999"}, "this run's atoms are #0 to #31"),
        ({"run": RUN, "atom": "abc"}, "this run's atoms are #0 to #31"),
        ({"run": "no-such-run", "atom": "3"}, "**no-such-run**, which is not under the runs root"),
    ],
)
def test_a_bad_link_says_so_and_shows_the_nearest_view(tiny_root, monkeypatch, atoms_of, params, said):
    _, _, _, ranking = atoms_of
    at = open_link(tiny_root, monkeypatch, **params)
    assert said in texts(at)
    assert at.title[0].value == "Atom detail"
    run = at.selectbox(key="run").value
    assert params["run"] == "no-such-run" or run == params["run"]
    pick = at.selectbox(key=f"{run}::atom::pick").value
    if params["atom"].isdigit() and int(params["atom"]) < 32:
        assert pick == int(params["atom"])  # a good atom id in a link to an unknown run still opens
    else:
        assert pick in {a["atom"] for a in ranking["anomaly"]}  # the page's own first atom


def test_flag_marks_reach_the_tags_every_table_uses(tiny_root, tmp_path, monkeypatch, atoms_of):
    """A run whose stats flag an atom shows the mark in Atoms' table and Atom detail's picker."""

    _, _, _, ranking = atoms_of
    root = tmp_path / "root"
    shutil.copytree(tiny_root / RUN, root / RUN)
    atom = ranking["anomaly"][0]["atom"]
    path = root / RUN / "atoms" / "stats.json"
    data = read_json(path)
    for row in data["atoms"]:
        row["flags"] = "border" if row["atom"] == atom else ""
    write_json(path, data)
    at = open_app(root, monkeypatch, page="atoms.py", run=RUN)
    table = frame_with(at, "guide", "rank", "atom", "tag")
    assert table.loc[table["atom"] == atom, "tag"].str.contains("⚑ border").all()
    at.switch_page(str(PAGES / "atom_detail.py")).run()
    assert_clean(at)
    assert "⚑ border" in at.selectbox(key=f"{RUN}::atom::pick").options[0]
    assert "Likely artefact" in texts(at)


def test_steering_at_zero_equals_the_ablation_and_drop_clears_both_guides(tiny_root, atoms_of):
    _, _, _, ranking = atoms_of
    ablator = Ablator(tiny_root / RUN, device="cpu")
    atom = ranking["anomaly"][0]["atom"]
    removed = ablator.ablate(remove=[atom], metrics=False)
    steered = ablator.ablate(scale={atom: 0.0}, metrics=False)
    assert torch.equal(steered.probs, removed.probs) and torch.equal(steered.scores, removed.scores)
    half = ablator.ablate(scale={atom: 0.5}, metrics=False)
    assert (half.probs - removed.probs).abs().max() > 0  # 0.5x is not the ablation
    # drop: every listed atom leaves every guide it was in, nothing else moves
    both = {a["atom"] for a in ranking["anomaly"]} & {a["atom"] for a in ranking["normal"]}
    listed = sorted(both)[:2] or [atom]
    dropped = ablator.drop(listed + [10**6], metrics=False)  # an atom in no guide is skipped
    cols = torch.isin(ablator.atoms, torch.tensor(listed))
    assert (dropped.coefficients[:, cols] == 0).all()
    assert torch.equal(dropped.coefficients[:, ~cols], ablator.base.cpu()[:, ~cols])
    diff = logit_difference(ablator.baseline().probs, removed.probs)
    assert diff.shape == removed.probs.shape and float(diff.abs().max()) > 0
    assert float(logit_difference(removed.probs, removed.probs).abs().max()) == 0.0


def test_dictionary_drops_flagged_atoms_from_the_anomaly_guide_or_both(tiny_root, monkeypatch, atoms_of, tmp_path):
    """The flags are set by hand on a copy (a tiny run need not have any): the two largest anomaly atoms
    and the largest other normal atom. Default: out of the anomaly guide only; then out of both guides."""
    _, _, _, ranking = atoms_of
    root = tmp_path / "runs"
    shutil.copytree(tiny_root / RUN, root / RUN)
    anomaly = [a["atom"] for a in ranking["anomaly"]]
    normal = next(a["atom"] for a in ranking["normal"] if a["atom"] not in anomaly[:2])
    chosen = {anomaly[0], anomaly[1], normal}
    stats = load_stats(root / RUN / "atoms" / "stats.json")  # attrs (the flag rule) kept: not recomputed
    stats["flags"] = ["border" if int(a) in chosen else "" for a in stats["atom"]]
    save_stats(stats, root / RUN / "atoms" / "stats.json", root / RUN / "atoms" / "stats.csv")
    at = open_app(root, monkeypatch, page="dictionary.py", run=RUN)
    k = f"{RUN}::dict::"
    at.toggle(key=k + "drop").set_value(True).run()
    assert_clean(at)
    ablator = Ablator(root / RUN, device="cpu")

    def shown() -> str:
        return next(m.value for m in at.metric if m.label == "Image AUROC" and m.delta is not None)

    only = ablator.ablate(remove=sorted(chosen & set(anomaly)), guide="anomaly").metrics
    assert shown() == f"{100 * only['mean']['image_auroc']:.1f}%"
    at.segmented_control(key=k + "drop_from").set_value("both guides").run()
    assert_clean(at)
    both = ablator.drop(sorted(chosen)).metrics
    assert shown() == f"{100 * both['mean']['image_auroc']:.1f}%"
    assert any("Remove the 3 flagged atoms" in t for t in (w.label for w in at.toggle))
