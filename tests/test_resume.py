"""kill -9 during SAE or guide training, then the same command: it resumes from the last epoch-end
checkpoint and ends with bitwise the tensors of an uninterrupted run; no checkpoint is left.

The real CLI runs in a subprocess on tiny data. To kill it at a known point, the killed run goes
through a wrapper that pauses after the first checkpoint is written (the checkpoint code itself is
unchanged); the parent then sends SIGKILL, as a crash or an OOM killer would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tiny_data import TINY_RUN_ARGS, tiny_set
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
PAUSING = """
import sys, time
from spg_core import cli, train_checkpoint
save = train_checkpoint.save
def save_then_pause(*args, **kwargs):
    save(*args, **kwargs)
    print("checkpoint written", file=sys.stderr, flush=True)
    time.sleep(600)  # killed here
train_checkpoint.save = save_then_pause
sys.exit(cli.main(sys.argv[1:]))
"""


def _args(stage: str, folder: Path, aux: str) -> list[str]:
    args = list(TINY_RUN_ARGS)
    args[args.index("--sae-epochs") + 1] = "4"
    args[args.index("--guide-epochs") + 1] = "4"
    if stage == "train-sae":
        return ["train-sae", "--aux", aux, "--out", str(folder), *args, "--workers", "0"]
    return ["train-guides", "--run", str(folder), "--guide-epochs", "4", "--quiet", "--device", "cpu", "--workers", "0"]


def _run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "spg_core.cli", *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def _kill_after_first_checkpoint(args: list[str], checkpoint: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING, *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _tensors(path: Path) -> dict:
    return load_file(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["studio", "official"])
def test_kill_9_then_the_same_command_resumes_to_the_uninterrupted_tensors(tmp_path, protocol):
    aux = tiny_set(tmp_path / "data", ("disc",), seed=1)
    env = {**os.environ, "SPG_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    extra = ["--protocol", protocol, "--auxk", "8", "--auxk-dead-tokens", "64"]
    _run(_args("train-sae", whole, aux) + extra, env)
    _run(_args("train-guides", whole, aux), env)

    _kill_after_first_checkpoint(_args("train-sae", killed, aux) + extra, killed / "sae.ckpt.safetensors", env)
    assert not (killed / "sae.safetensors").exists()
    # a restart from scratch would give the same tensors too: the run must say it resumed
    assert "SAE training resumes after epoch 1 of 4" in _run(_args("train-sae", killed, aux) + extra, env)
    assert not (killed / "sae.ckpt.safetensors").exists()
    want, got = _tensors(whole / "sae.safetensors"), _tensors(killed / "sae.safetensors")
    assert want.keys() == got.keys() and all(want[k].equal(got[k]) for k in want)

    _kill_after_first_checkpoint(_args("train-guides", killed, aux), killed / "guides.ckpt.safetensors", env)
    assert not (killed / "guides.safetensors").exists()
    assert "guide training resumes after epoch 1 of 4" in _run(_args("train-guides", killed, aux), env)
    assert not (killed / "guides.ckpt.safetensors").exists()
    want, got = _tensors(whole / "guides.safetensors"), _tensors(killed / "guides.safetensors")
    assert want.keys() == got.keys() and all(want[k].equal(got[k]) for k in want)
