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

from spg_core.cli import main as spg_main
from spg_core.consistency import inconsistent_artifacts
from spg_core.run_staging import staging_path
from spg_core.runs import RunDir

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


def _files(folder: Path) -> dict[str, bytes]:
    """Every file of a run with its bytes, but the lock file (it records its latest holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | {
        ".lock": b""
    }


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "kill-9"])
def test_an_interrupted_overwrite_leaves_the_old_run_byte_for_byte(tmp_path, sig):
    aux, target = tiny_pair(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "SPG_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    os.environ["SPG_CACHE"], saved = env["SPG_CACHE"], os.environ.get("SPG_CACHE")
    try:
        old_args = ["run", "--aux", aux, "--target", target, "--out", str(out), *TINY_RUN_ARGS, "--workers", "0"]
        assert spg_main(old_args) == 0
        old = _files(out)
        staging = staging_path(out)

        proc = subprocess.Popen(
            [*_command(aux, target, out), "--overwrite"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(staging / "config.json", proc, timeout=300)  # the new run is under way, beside the old
        time.sleep(0.5)  # inside SAE training
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err
        if sig == signal.SIGINT:
            assert f"the run in {out} is untouched" in err and "Traceback" not in err
        assert _files(out) == old  # byte for byte
        assert inconsistent_artifacts(RunDir(out)) == [] and staging.is_dir()

        # The next attempt with other settings removes the unfinished staging folder and finishes.
        assert spg_main([*old_args, "--k", "8", "--overwrite"]) == 0
        assert json.loads((out / "sae.json").read_text())["config"]["k"] == 8
        assert not staging.exists() and inconsistent_artifacts(RunDir(out)) == []
    finally:
        if saved is None:
            os.environ.pop("SPG_CACHE", None)
        else:
            os.environ["SPG_CACHE"] = saved


@pytest.mark.slow
def test_two_writers_the_second_is_refused_and_the_first_run_is_intact(tmp_path, capsys):
    aux, target = tiny_pair(tmp_path / "data")
    out = tmp_path / "run"
    env = {**os.environ, "SPG_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
    cmd = _command(aux, target, out)
    cmd[cmd.index("--sae-epochs") + 1] = "500"  # long enough to be caught under way (the refusal takes no time)
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "config.json", first, timeout=300)
        second = ["run", "--aux", aux, "--target", target, "--out", str(out), *TINY_RUN_ARGS, "--k", "8"]
        for extra in ([], ["--overwrite"]):
            assert spg_main([*second, *extra]) == 2
            err = capsys.readouterr().err
            assert f"pid {first.pid}" in err and "another command is writing" in err
        _, err = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["sae"]["k"] == 4 and json.loads((out / "sae.json").read_text())["config"]["k"] == 4
    assert inconsistent_artifacts(RunDir(out)) == [] and (out / "metrics.json").is_file()
