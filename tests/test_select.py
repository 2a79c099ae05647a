"""`spg select`: leave-categories-out validation on the auxiliary set, never reading the target."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import spg_core.select as select
from spg_core.cli import main
from spg_core.data import generate_synthetic
from spg_core.select import category_folds

_GUARDED: list[str] = []  # path prefixes whose opening raises (see _guard)
_TOUCHED: list[str] = []


def _audit(event: str, args: tuple) -> None:
    """Audit hook: any open / listdir / scandir under a guarded folder is recorded and refused."""
    if not _GUARDED or event not in ("open", "os.listdir", "os.scandir", "os.chdir", "glob.glob"):
        return
    path = args[0] if args else None
    if isinstance(path, (str, bytes, os.PathLike)):
        text = os.fsdecode(os.fspath(path))
        if any(text.startswith(g) for g in _GUARDED):
            _TOUCHED.append(f"{event} {text}")
            raise PermissionError(f"select touched the target: {text}")


sys.addaudithook(_audit)  # hooks cannot be removed: it is idle while _GUARDED is empty


@pytest.fixture
def guard():
    yield _GUARDED
    _GUARDED.clear()


def _small_set(root: Path, categories: list[str], defects: list[str]) -> Path:
    return generate_synthetic(
        root, categories=categories, defects=defects, n_train_good=0, n_test_good=4, n_per_defect=2, workers=1
    )


def select_with_the_target_locked(tmp_path: Path, guard: list[str], grid: list[str]) -> int:
    """`spg select` on a small synthetic auxiliary set (disc, weave) with the target (pill) unreadable and
    guarded by the audit hook; its exit code (select.json lands in tmp_path / "sel")."""
    aux = _small_set(tmp_path / "aux", ["disc", "weave"], ["stain", "hole"])
    target = _small_set(tmp_path / "target", ["pill"], ["stain"])
    os.chmod(target, 0)  # unreadable for a normal user; root is stopped by the audit hook
    guard.append(str(target))
    try:
        return main(
            ["select", "--aux", f"mvtec:{aux}", "--target", f"mvtec:{target}", "--out", str(tmp_path / "sel")]
            + ["--cache-dir", str(tmp_path / "cache"), *grid]
        )
    finally:
        guard.clear()
        os.chmod(target, 0o755)


TINY_GRID = [
    "--backbones",
    "effnet-lite0-tiny",
    "--widths",
    "32",
    "--ks",
    "4,8",
    "--l1s",
    "1e-3",
    "--guide-epochs",
    "2",
    "--sae-epochs",
    "1",
    "--device",
    "cpu",
    "--quiet",
]


@pytest.mark.slow  # ~70 s on 2 contended cores, most of it importing timm/transformers and 4 fits
def test_select_never_reads_the_target_and_writes_the_table(tmp_path, guard, capsys):
    code = select_with_the_target_locked(tmp_path, guard, TINY_GRID)
    assert code == 0 and _TOUCHED == []
    result = json.loads((tmp_path / "sel" / "select.json").read_text())
    assert result["folds"] == ["disc", "weave"] and result["target_opened"] is False
    assert len(result["rows"]) == 2 * 2  # 2 settings x 2 folds
    assert {r["k"] for r in result["summary"]} == {4, 8}
    best = max(result["summary"], key=lambda r: r["criterion"])
    assert result["chosen"] == best
    assert f"--target mvtec:{tmp_path / 'target'}" in result["command"] and f"--k {best['k']}" in result["command"]
    lines = (tmp_path / "sel" / "select.csv").read_text().splitlines()
    assert lines[0].startswith("backbone,width,k,l1,guide_epochs,fold,image_auroc")
    assert len(lines) == 1 + 4 + 2 and sum(",mean," in line for line in lines) == 2
    assert "chosen on" in capsys.readouterr().out


def test_the_guard_does_refuse_a_read_of_the_target(tmp_path, guard):
    """The hook above is what makes the first test meaningful: show it bites."""
    target = _small_set(tmp_path / "target", ["pill"], ["stain"])
    guard.append(str(target))
    with pytest.raises(PermissionError):
        (target / "SYNTHETIC.json").read_text()
    _TOUCHED.clear()


def test_folds_rotate_categories_or_defect_kinds():
    recs = [
        {"category": c, "label": lab, "defect": d}
        for c in ("a", "b", "c", "d", "e")
        for lab, d in ((0, "good"), (1, "x"))
    ]
    folds = category_folds(recs, max_folds=4)
    assert [f.name for f in folds] == ["a+e", "b", "c", "d"]
    for f in folds:
        held = {recs[i]["category"] for i in f.held_out}
        assert not held & {recs[i]["category"] for i in f.train}
        assert sorted(f.train + f.held_out) == list(range(len(recs)))
    one = [{"category": "m", "label": 0, "defect": "good"}] * 4 + [
        {"category": "m", "label": 1, "defect": d} for d in ("crack", "crack", "hole", "stain")
    ]
    folds = category_folds(one, max_folds=2)
    assert [f.name for f in folds] == ["m:crack+stain", "m:hole"]
    assert [sorted(f.held_out) for f in folds] == [[0, 2, 4, 5, 7], [1, 3, 6]]


@pytest.mark.slow  # three tiny-effnet `spg select` runs: ~100 s on 2 contended cores
def test_an_interrupted_select_resumes_with_only_the_missing_rows(tmp_path, monkeypatch):
    aux = _small_set(tmp_path / "aux", ["disc", "weave"], ["stain", "hole"])
    calls, stop_at = [], [3]

    def fake_fold(aux_view, held_view, setting, *args):  # the fit is not what this test is about
        calls.append((setting.k, held_view.images[0]["category"]))
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt  # the user stops the grid after two rows
        return {m: setting.k / 10 for m in select.METRICS}

    monkeypatch.setattr(select, "score_fold", fake_fold)
    args = [
        "select",
        "--aux",
        f"mvtec:{aux}",
        "--out",
        str(tmp_path / "sel"),
        "--cache-dir",
        str(tmp_path / "c"),
        *TINY_GRID,
    ]
    assert main(args) == 130  # the CLI's Ctrl-C exit
    saved = json.loads((tmp_path / "sel" / select.ROWS_FILE).read_text())
    assert [(r["k"], r["fold"]) for r in saved["rows"]] == [(4, "disc"), (4, "weave")]
    assert not (tmp_path / "sel" / "select.json").exists()

    calls.clear()
    stop_at[0] = 0
    assert main(args) == 0
    assert calls == [(8, "disc"), (8, "weave")]  # only the missing rows ran
    assert len(json.loads((tmp_path / "sel" / "select.json").read_text())["rows"]) == 4

    calls.clear()
    assert main([a if a != "1" else "2" for a in args]) == 0  # --sae-epochs 2: the old rows do not count
    assert len(calls) == 4
