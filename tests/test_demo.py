"""The demo runs' order and the background build's progress file; zero-training baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from spg_core import demo
from spg_core.baselines import patch_scores, self_nn_scores


def test_demo_builds_effnet_first_and_builtin_second():
    assert [r.backbone for r in demo.DEMO_RUNS] == ["effnet-lite0", "builtin"]
    assert demo.DEMO_RUNS[0].name == demo.DEMO_NAME
    cfg = demo.demo_config(demo.DEMO_RUNS[1])
    assert (cfg.aux, cfg.target, cfg.backbone, cfg.sae.width) == ("synthetic-a", "synthetic-b", "builtin", 512)


def test_progress_file_reports_stages_and_a_dead_builder(tmp_path):
    assert demo.read_demo_progress(tmp_path) == {}
    demo._report(tmp_path, "run-x", "queued")
    demo._report(tmp_path, "run-x", "scoring the target")
    got = demo.read_demo_progress(tmp_path)["run-x"]
    assert (got["stage"], got["step"], got["steps"], got["alive"]) == ("scoring the target", 2, 4, True)
    # A builder that died before "done": its pid is gone, so the app can say so.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    state = json.loads((tmp_path / demo.PROGRESS_FILE).read_text())
    state["run-x"]["pid"] = gone.pid
    (tmp_path / demo.PROGRESS_FILE).write_text(json.dumps(state))
    assert demo.read_demo_progress(tmp_path)["run-x"]["alive"] is False
    demo._report(tmp_path, "run-x", "done")
    done = demo.read_demo_progress(tmp_path)["run-x"]
    assert done["step"] == done["steps"] and done["alive"] is True and done["pid"] == os.getpid()


def test_self_nn_baseline_flags_a_patch_without_look_alikes_outside_its_neighbourhood():
    base = torch.tensor([1.0, 0.0, 0.0])
    tokens = base.repeat(1, 36, 1) + 0.01 * torch.randn(1, 36, 3, generator=torch.Generator().manual_seed(0))
    tokens[0, 14] = torch.tensor([0.0, 1.0, 0.0])  # one odd patch at (2, 2) of a 6 x 6 grid
    tokens[0, 15] = torch.tensor([0.0, 1.0, 0.0])  # its twin is its neighbour: excluded
    scores = self_nn_scores(tokens, (6, 6))
    assert set(scores[0].topk(2).indices.tolist()) == {14, 15}
    assert float(scores[0, 14]) > 0.9 and float(scores[0, [0, 35]].max()) < 0.01
    assert torch.equal(patch_scores(tokens, (6, 6), "joint-channel"), tokens[..., 1])


def test_the_background_builder_queues_and_builds_every_missing_demo_run_in_order(tmp_path, monkeypatch):
    """`python -m spg_core.demo --runs ROOT` (what `spg dashboard --demo` starts): with no names, every
    demo run not yet complete is queued at once (the pages show them), then built one after another."""
    seen = []  # (run being built, runs in the progress file at that moment)
    monkeypatch.setattr(
        demo, "build_demo_run", lambda root, run, **kw: seen.append((run.name, sorted(demo.read_demo_progress(root))))
    )
    names = [r.name for r in demo.DEMO_RUNS]
    assert demo.main(["--runs", str(tmp_path)]) == 0
    assert seen == [(name, sorted(names)) for name in names]
    seen.clear()
    assert demo.main(["--runs", str(tmp_path), names[1]]) == 0
    assert [name for name, _ in seen] == [names[1]]
    with pytest.raises(SystemExit):
        demo.main(["--runs", str(tmp_path), "no-such-run"])
