"""A Ctrl-C during `spg run`, then the same command: it resumes from what was finished and completes.

Runs the real CLI in a subprocess (a SIGINT can only be sent to a whole process) on tiny
data, interrupting once the auxiliary token store is finished and training has begun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.tiny_data import TINY_RUN_ARGS, tiny_pair

REPO = Path(__file__).resolve().parents[1]


def _command(aux: str, target: str, out: Path) -> list[str]:
    # Much longer SAE training than the other tiny runs (seconds), so that the interrupt lands inside
    # it; no DataLoader workers, since a SIGINT that arrives while a worker forks is swallowed by
    # Python's at-fork handlers ("Exception ignored") and the run then finishes with rc 0.
    args = list(TINY_RUN_ARGS)
    args[args.index("--sae-epochs") + 1] = "3000"
    return [
        sys.executable,
        "-m",
        "spg_core.cli",
        "run",
        "--aux",
        aux,
        "--target",
        target,
        "--out",
        str(out),
        *args,
        "--workers",
        "0",
    ]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"spg run ended (rc {proc.returncode}) before {path.name} appeared:\n"
                f"{proc.stderr.read() if proc.stderr else ''}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigint_then_the_same_command_resumes_and_finishes(tmp_path):
    aux, target = tiny_pair(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "SPG_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    cmd = _command(aux, target, out)

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "config.json", proc, timeout=300)  # written after the aux store is finished
    time.sleep(0.5)  # inside SAE training
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (out / "metrics.json").exists() and not (out / "guides.safetensors").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]  # nothing half-written
    stores = sorted((tmp_path / "cache" / "tokens").iterdir())
    finished = [s for s in stores if json.loads((s / "manifest.json").read_text()).get("complete")]
    assert finished, "the auxiliary token store should have been finished before the interrupt"
    kept = {s: (s / "manifest.json").stat().st_mtime_ns for s in finished}

    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["mean"]["pixel_auroc"] <= 1.0
    assert (out / "sae.safetensors").is_file() and (out / "guides.safetensors").is_file()
    # the finished store was re-used as it was, not extracted again
    assert all((s / "manifest.json").stat().st_mtime_ns == t for s, t in kept.items())
