"""The atom-space context beside SPG: the term, its atom decomposition, its fusion, its selection on
the auxiliary side alone, and the official protocol left exactly as it was."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.tiny_data import TINY_RUN_ARGS, tiny_pair
from streamlit.testing.v1 import AppTest
from test_select import _TOUCHED, guard, select_with_the_target_locked  # noqa: F401  (guard: the audit-hook fixture)

from spg_core import run_paths
from spg_core.cli import main
from spg_core.config import ScoreConfig
from spg_core.context import (
    context_contributions,
    context_terms,
    fuse,
    region_context,
    resolve_context,
    with_overrides,
)
from spg_core.errors import SPGError
from spg_core.inference import Predictor
from spg_core.runs import PATCH_MAPS_FILE, RunDir
from spg_core.scoring import anomaly_maps, cosine_logits
from spg_core.store import TokenStore


def _random_codes(n: int, m: int, seed: int) -> torch.Tensor:
    """Non-negative sparse codes `[n, m]` (TopK-like), one of them all zero."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, m, generator=g) * (torch.rand(n, m, generator=g) < 0.2)
    codes[3] = 0
    return codes


def _direct_context(codes: torch.Tensor, grid: tuple[int, int]) -> list[float]:
    """1 - the best cosine to a patch outside the 3 x 3 neighbourhood, patch by patch in plain Python."""
    w = grid[1]
    rows = codes.double().tolist()
    out = []
    for i, a in enumerate(rows):
        na = math.sqrt(sum(x * x for x in a))
        if na == 0:
            out.append(0.0)
            continue
        best = -1.0
        for j, b in enumerate(rows):
            if abs(i // w - j // w) <= 1 and abs(i % w - j % w) <= 1:
                continue
            nb = math.sqrt(sum(x * x for x in b))
            best = max(best, sum(x * y for x, y in zip(a, b)) / (na * nb) if nb > 0 else 0.0)
        out.append(1.0 - best)
    return out


@pytest.mark.parametrize("grid, seed", [((4, 5), 0), ((6, 6), 1)])
def test_context_term_equals_a_direct_computation(grid, seed):
    codes = _random_codes(grid[0] * grid[1], 24, seed)
    got = context_terms(codes, grid)
    # float32 engine vs float64 Python: measured 1.8e-7 apart (2026-12-07); 1e-5 is float32 rounding room
    assert torch.allclose(got.double(), torch.tensor(_direct_context(codes, grid), dtype=torch.float64), atol=1e-5)
    assert got[3] == 0 and got.min() >= 0 and got.max() <= 1 + 1e-6


def test_atom_decomposition_sums_to_the_term():
    grid = (5, 5)
    codes = _random_codes(25, 40, 2)
    parts = context_contributions(codes, grid)
    assert parts.shape == (25, 40)
    # an exact identity; measured 1.2e-7 apart in float32 (sums in another order): 1e-6 is rounding room
    assert torch.allclose(parts.sum(-1), context_terms(codes, grid), atol=1e-6)
    # an atom silent here contributes nothing
    assert torch.all(parts[codes == 0] == 0)


def test_a_patch_with_an_atom_no_other_patch_has_gets_the_largest_term():
    grid = (5, 5)
    codes = torch.zeros(25, 8)
    codes[:, 0] = 1.0  # every patch fires atom 0
    codes[12, 5] = 2.0  # the centre also fires atom 5, which nothing else does
    term = context_terms(codes, grid)
    # the others have an identical code elsewhere: 0 up to float32 rounding of 1 - cos(u, u)
    assert term.argmax() == 12 and torch.allclose(term[torch.arange(25) != 12], torch.zeros(24), atol=1e-6)
    assert context_contributions(codes, grid)[12].argmax() == 5


def test_fusion_forms():
    logits, context = torch.tensor([[-3.0, 0.0, 2.0]]), torch.tensor([[0.5, 0.1, 0.0]])
    assert torch.equal(fuse(logits, context, "logit", 0.0), torch.sigmoid(logits))
    assert torch.allclose(fuse(logits, context, "logit", 2.0), torch.sigmoid(logits + 2 * context))
    assert torch.allclose(fuse(logits, context, "mix", 0.25), 0.75 * torch.sigmoid(logits) + 0.25 * context)
    with pytest.raises(SPGError, match="context form"):
        fuse(logits, context, "max", 1.0)


def test_context_needs_a_weight_and_is_never_official(tmp_path):
    with pytest.raises(SPGError, match="official"):
        resolve_context(ScoreConfig(context=True, context_weight=1.0), "official")
    with pytest.raises(SPGError, match="needs a weight"):
        resolve_context(ScoreConfig(context=True), "studio")
    chosen = tmp_path / "select.json"
    chosen.write_text(json.dumps({"context": {"chosen": {"form": "mix", "weight": 0.5}}}))
    got = resolve_context(ScoreConfig(context=True, context_select=str(chosen)), "studio")
    assert (got.context_form, got.context_weight) == ("mix", 0.5)
    given = resolve_context(ScoreConfig(context=True, context_select=str(chosen), context_weight=3.0), "studio")
    assert given.context_weight == 3.0  # --context-weight overrides the selected weight
    assert resolve_context(ScoreConfig(), "official") == ScoreConfig()


def _direct_spg_logits(run: str, tokens: torch.Tensor) -> torch.Tensor:
    """(cos_a - cos_n) / tau with the run's local guides: SPG's logit as scoring.py defines it."""
    p = Predictor(run, device="cpu")
    cos = cosine_logits(tokens.float(), p.scorer.guides)
    return (cos[..., 1] - cos[..., 0]) / p.scorer.tau


def _run(tmp_path, *extra: str) -> tuple[str, int]:
    aux, target = tiny_pair(tmp_path / "data")
    out = str(tmp_path / "run")
    code = main(["run", "--aux", aux, "--target", target, "--out", out, *TINY_RUN_ARGS, *extra])
    return out, code


@pytest.mark.slow  # ~70 s on 2 contended cores (2026-12-07): a tiny run, then scoring it
def test_official_maps_are_unchanged_bit_for_bit(tmp_path):
    run, code = _run(tmp_path, "--protocol", "official")
    assert code == 0
    probs, _, _ = RunDir(run).read_target()
    store = TokenStore(RunDir(run).read_config()["target_store"])
    tokens = store.tokens(range(store.num_images))
    p = Predictor(run, device="cpu")
    assert p.scorer.context is None
    g = p.scorer.guides  # plain SPG as scoring.py computes it, with no context code on the path:
    want, _ = anomaly_maps(tokens, g[0], g[1], tau=p.scorer.tau, grid=store.grid, size=store.image_size)
    assert torch.equal(probs.reshape(want.shape), want.to(probs.dtype))
    stored = RunDir(run).file(PATCH_MAPS_FILE).read_bytes()
    assert main(["eval", "--run", run, "--context", "--context-weight", "1", "--quiet"]) == 2  # refused
    assert RunDir(run).file(PATCH_MAPS_FILE).read_bytes() == stored


@pytest.mark.slow  # ~80 s on 2 contended cores (2026-12-07): a tiny run, then scoring it
def test_a_context_run_records_its_weight_and_scores_the_fused_map(tmp_path):
    run, code = _run(tmp_path, "--protocol", "studio", "--context", "--context-form", "logit", "--context-weight", "2")
    assert code == 0
    score = RunDir(run).read_config()["score"]
    assert (score["context"], score["context_form"], score["context_weight"]) == (True, "logit", 2.0)
    probs, _, _ = RunDir(run).read_target()
    store = TokenStore(RunDir(run).read_config()["target_store"])
    p = Predictor(run, device="cpu")
    for i in (0, store.num_images - 1):
        tokens = store.tokens([i])
        codes = p.sae.encode_dense(tokens[0].float())
        want = torch.sigmoid(_direct_spg_logits(run, tokens)[0] + 2.0 * context_terms(codes, store.grid))
        # measured 0 (2026-12-07, tiny run): same float32 ops; 1e-6 leaves room for BLAS batch-shape rounding
        assert torch.allclose(probs[i].float().flatten(), want, atol=1e-6)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["settings"]["context"] == {"form": "logit", "weight": 2.0}
    # predict: the run's own context by default, plain SPG with --no-context
    image = store.images[-1]["image_path"]
    assert main(["predict", "--run", run, image, "--out", str(tmp_path / "with"), "--device", "cpu"]) == 0
    assert main(["predict", "--run", run, image, "--out", str(tmp_path / "plain"), "--no-context"]) == 0
    with_context, plain = (
        float((tmp_path / d / "scores.csv").read_text().splitlines()[1].split(",")[1]) for d in ("with", "plain")
    )
    assert with_context > plain  # logit form, weight 2, context >= 0: every patch's probability rises


TINY_CONTEXT_GRID = [
    "--backbones",
    "effnet-lite0-tiny",
    "--widths",
    "32",
    "--ks",
    "4",
    "--l1s",
    "1e-3",
    "--guide-epochs",
    "2",
    "--sae-epochs",
    "1",
    "--device",
    "cpu",
    "--quiet",
    "--context-grid",
    "logit:1,logit:4,mix:0.5",
]


@pytest.mark.slow  # ~60 s on 2 contended cores: imports, 2 fits, 2 x 3 context evaluations
def test_select_chooses_the_context_weight_without_reading_the_target(tmp_path, guard):  # noqa: F811
    code = select_with_the_target_locked(tmp_path, guard, TINY_CONTEXT_GRID)
    assert code == 0 and _TOUCHED == []
    result = json.loads((tmp_path / "sel" / "select.json").read_text())
    context = result["context"]
    assert [(r["form"], r["weight"]) for r in context["summary"]] == [
        ("logit", 0.0),
        ("logit", 1.0),
        ("logit", 4.0),
        ("mix", 0.5),
    ]
    assert context["chosen"] == max(context["summary"], key=lambda r: r["criterion"])
    assert context["helps"] == (context["chosen"]["weight"] > 0)
    plain = context["summary"][0]
    assert plain["image_auroc"] == pytest.approx(result["chosen"]["image_auroc"])  # weight 0 is plain SPG
    assert all(len(r["context"]) == 3 for r in result["rows"])  # every fold scored every grid entry
    assert f"--context-select {tmp_path / 'sel' / 'select.json'}" in result["command"]
    form, weight = context["chosen"]["form"], context["chosen"]["weight"]
    got = resolve_context(ScoreConfig(context=True, context_select=str(tmp_path / "sel" / "select.json")), "studio")
    assert (got.context_form, got.context_weight) == (form, weight)


def test_region_context_names_the_atom_that_makes_the_region_unusual():
    grid = (5, 5)
    codes = torch.zeros(25, 8)
    codes[:, 0] = 1.0
    codes[12, 5] = 2.0  # only the centre fires atom 5
    codes[0, 3] = codes[24, 3] = 1.0  # atom 3 fires in two corners
    region = torch.zeros(25, dtype=torch.bool)
    region[12] = True
    out = region_context(codes, grid, region)
    assert out["context"] == pytest.approx(float(context_terms(codes, grid)[12]), abs=1e-6)
    top = out["atoms"][0]
    assert top["atom"] == 5 and top["elsewhere"] == 0
    assert top["words"] == "atom 5 fires here and nowhere else in this image"
    assert all(r["share"] > 0 for r in out["atoms"])  # only atoms that raise the context are listed
    assert 0 not in [r["atom"] for r in out["atoms"]]  # atom 0 fires everywhere: it lowers the term here


@pytest.mark.slow  # ~85 s on 2 contended cores (2026-12-07): a tiny run, then scoring it
def test_methods_page_shows_three_maps_and_the_engines_figures(tmp_path, monkeypatch):
    aux, target = tiny_pair(tmp_path / "data")
    run = tmp_path / "runs" / "ctx"
    args = ["run", "--aux", aux, "--target", target, "--out", str(run), *TINY_RUN_ARGS]
    assert main([*args, "--protocol", "studio", "--context", "--context-weight", "2"]) == 0
    monkeypatch.setenv(run_paths.RUNS_ENV, str(tmp_path / "runs"))
    app = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    at = AppTest.from_file(str(app), default_timeout=300)  # first run imports torch on 2 busy cores
    at.run()
    at.selectbox(key="run").set_value("ctx").run()
    at.switch_page(str(app.parent.parent / "pages" / "methods.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    captions = " ".join(c.value for c in at.caption)
    assert "weight **2**" in captions
    assert all(f"**{name}** · map max" in captions for name in ("SPG", "SPG + context", "self-nn"))
    at.button(key="ctx::methods::metrics").click().run()
    assert not at.exception, [e.value for e in at.exception]
    frame = at.dataframe[0].value.set_index("method")
    assert list(frame.index) == ["SPG", "SPG + context", "self-nn"]
    # the run was evaluated with the context on: its metrics.json is the page's SPG + context row
    stored = json.loads((run / "metrics.json").read_text())["mean"]
    for m in ("image_auroc", "pixel_auroc", "aupro"):
        assert frame.loc["SPG + context", m] == pytest.approx(stored[m], abs=1e-6)
    # Maps: the selected patch and the region -> atoms panel both state the context in words
    at.switch_page(str(app.parent.parent / "pages" / "maps.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    said = " ".join([c.value for c in at.caption] + [m.value for m in at.markdown])
    assert "Unlike the rest of this image" in said
    assert said.count("(1 - best cosine of its atom code") == 2  # the patch panel and the region panel


def test_a_new_selection_on_the_command_line_replaces_the_recorded_weight(tmp_path):
    chosen = tmp_path / "select.json"
    chosen.write_text(json.dumps({"context": {"chosen": {"form": "mix", "weight": 0.25}}}))
    recorded = ScoreConfig(context=True, context_form="logit", context_weight=4.0)
    assert with_overrides(recorded, {}).context_weight == 4.0
    fresh = resolve_context(with_overrides(recorded, {"context_select": str(chosen)}), "studio")
    assert (fresh.context_form, fresh.context_weight) == ("mix", 0.25)
    both = with_overrides(recorded, {"context_select": str(chosen), "context_weight": 1.0})
    assert resolve_context(both, "studio").context_weight == 1.0
