"""Runs that never lie: one writer per run folder, overwrite only when asked, inconsistent runs
called so, and the remaining faults of the bad-input tour (named errors, no half-done outputs).

Most cases need no run; the others share one tiny run (dinov3-vitl16-tiny on the tiny synthetic
pair: ~30 s on 2 cores the first time, seconds once its token stores are cached).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_data import TINY_RUN_ARGS, tiny_pair
from PIL import Image
from test_dashboard import frame_with, open_app, texts

import spg_core.predict as predict
from dashboard.viewmodels.health import check_run
from spg_core.atomic import MAX_JSON_BYTES, atomic_path, check_regular_file, disk_error, read_json, save_tensors
from spg_core.cli import _config_from, build_parser
from spg_core.cli import main as spg_main
from spg_core.consistency import inconsistent_artifacts
from spg_core.errors import SPGError
from spg_core.images import shape_note
from spg_core.launch import check_port_free
from spg_core.predict import MAX_NAME_BYTES
from spg_core.run_lock import LOCK_FILE, run_lock
from spg_core.run_staging import finish_swap, replaced_path, staging_path
from spg_core.runs import PATCH_MAPS_FILE, SCORES_FILE, RunDir, list_runs, target_shape_problem
from spg_core.uploads import read_image_file

REPO = Path(__file__).resolve().parents[1]


def _holder(folder: Path, command: str = "spg holder") -> subprocess.Popen:
    """Another process holding `folder`'s write lock until killed (prints 'locked' once it holds it)."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from spg_core.run_lock import run_lock
        with run_lock({str(folder)!r}, {command!r}):
            print("locked", flush=True)
            time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (but the lock file, whose record changes) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | {
        LOCK_FILE: b""
    }


# -- one writer per run folder ---------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    folder = tmp_path / "run"
    proc = _holder(folder, "spg run --out run")
    try:
        start = time.monotonic()
        with pytest.raises(SPGError) as info, run_lock(folder, "spg eval"):
            pass
        assert time.monotonic() - start < 2  # refused at once, not after a wait
        assert f"pid {proc.pid}" in str(info.value) and "spg run --out run" in str(info.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    proc = _holder(folder)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert str(proc.pid) in (folder / LOCK_FILE).read_text()  # the dead holder's record is still there
    with run_lock(folder, "spg eval"):
        record = json.loads((folder / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "spg eval"
    err = capsys.readouterr().err
    assert f"took over the lock of pid {proc.pid}" in err and "no longer running" in err
    assert (folder / LOCK_FILE).read_text() == ""  # released: names nobody


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with run_lock(tmp_path / "r", "outer"), run_lock(tmp_path / "r", "inner"):
        assert json.loads((tmp_path / "r" / LOCK_FILE).read_text())["command"] == "outer"


# -- staging and swap (no run needed) --------------------------------------------------------------


def test_a_swap_cut_between_its_renames_is_finished_by_the_next_command(tmp_path):
    out = tmp_path / "run"
    staging, old = staging_path(out), replaced_path(out)
    staging.mkdir()
    (staging / "config.json").write_text('{"new": 1}')
    old.mkdir()  # kill -9 after `out -> .replaced`, before `staging -> out`
    (old / "config.json").write_text('{"old": 1}')
    finish_swap(out)
    assert json.loads((out / "config.json").read_text()) == {"new": 1}
    assert not old.exists() and not staging.exists()


def test_staging_folders_are_not_listed_as_runs(tmp_path):
    for name in ("a", ".a.staging"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert [p.name for p in list_runs(tmp_path)] == ["a"]


# -- faults that need no run ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
        (OSError(errno.EFBIG, "File too large"), "ulimit -f"),
        (OSError(errno.ENAMETOOLONG, "File name too long"), "too long"),
        # safetensors' Rust writer and torch report the errno as text only
        (RuntimeError("failed to write: File too large (os error 27)"), "ulimit -f"),
    ],
)
def test_file_system_refusals_become_named_errors(tmp_path, exc, words):
    err = disk_error(exc, tmp_path / "x")
    assert isinstance(err, SPGError) and words in str(err) and str(tmp_path / "x") in str(err)
    assert disk_error(ValueError("File too large"), tmp_path) is None  # not an IO error: left alone
    with pytest.raises(SPGError, match=words), atomic_path(tmp_path / "y.json"):
        raise exc
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_a_name_too_long_for_the_file_system_is_a_named_error(tmp_path):
    with pytest.raises(SPGError, match="ENAMETOOLONG"):
        save_tensors(tmp_path / ("x" * 300 + ".safetensors"), {"a": torch.zeros(1)})


@pytest.mark.slow  # a fresh interpreter, backbone and DataLoader workers: 60 s on 2 busy cores
@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_the_file_size_limit_during_extraction_is_a_named_error(tmp_path):
    """`ulimit -f` while a token store is written: a named error, no shard left behind."""
    aux, _ = tiny_pair(tmp_path / "data")
    code = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        from spg_core.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPG_CACHE": str(tmp_path / "cache")}
    args = ["extract", "--dataset", aux, "--backbone", "dinov3-vitl16-tiny", "--device", "cpu", "--quiet"]
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "EFBIG" in done.stderr and "ulimit -f" in done.stderr and "Traceback" not in done.stderr
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


def test_non_finite_settings_are_refused_before_any_work_naming_the_flag(tmp_path, capsys):
    out = tmp_path / "run"
    for flag, value in (("--guide-lr", "inf"), ("--sae-lr", "nan"), ("--tau", "-inf")):
        args = ["run", "--aux", "synthetic-a", "--target", "synthetic-b", "--out", str(out), f"{flag}={value}"]
        assert spg_main([*args, *TINY_RUN_ARGS]) == 2
        err = capsys.readouterr().err
        assert "not a finite number" in err and flag in err and "Traceback" not in err
    assert not out.exists()  # refused before anything was made


def test_zero_epochs_are_warned(tmp_path, capsys):
    args = build_parser().parse_args(
        ["train-sae", "--aux", "synthetic-a", "--out", str(tmp_path), "--sae-epochs", "0", "--guide-epochs", "0"]
    )
    _config_from(args)
    err = capsys.readouterr().err
    assert "--sae-epochs 0: the SAE is not trained" in err and "--guide-epochs 0" in err


def test_extreme_images_are_warned():
    assert "stretched" in shape_note((4000, 2), 224) and "enlarged" in shape_note((1, 1), 224)
    assert shape_note((900, 700), 224) is None and shape_note((400, 100), 224) is None  # 4:1 still ordinary


def test_reads_check_for_a_regular_file_of_bounded_size(tmp_path):
    with pytest.raises(SPGError, match="not a regular file"):
        read_image_file("/dev/zero")  # a scores.csv entry pointing at a device: refused, not read forever
    big = tmp_path / "big.png"
    with open(big, "wb") as fh:
        fh.truncate(30 * 2**20)  # sparse: no disk used
    with pytest.raises(SPGError, match="more than the 25 MB"):
        read_image_file(big)
    assert check_regular_file(big, 2**30) == 30 * 2**20
    huge = tmp_path / "metrics.json"
    with open(huge, "wb") as fh:
        fh.truncate(MAX_JSON_BYTES + 1)
    with pytest.raises(SPGError, match="more than the 256 MB"):
        read_json(huge, what="metrics")


def test_shape_problems_are_named():
    assert target_shape_problem((5, 4, 4), (5,), {"grid": [4, 4]}) is None
    assert "4 x 4 patches but grid is 2 x 2" in target_shape_problem((5, 4, 4), (5,), {"grid": [2, 2]})
    assert "5 maps but scores of shape [4]" in target_shape_problem((5, 4, 4), (4,), {})
    assert "not [images, h, w]" in target_shape_problem((5, 16), (5,), {})


def test_dashboard_refuses_a_taken_port_naming_the_holder(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SPGError, match=f"port {port}") as info:
            check_port_free(port, "localhost")
        assert f"pid {os.getpid()}" in str(info.value)
        assert spg_main(["dashboard", "--runs", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port}" in err and "SPG Studio on" not in err


# -- on one tiny run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    return tiny_pair(tmp_path_factory.mktemp("safety") / "data")


@pytest.fixture(scope="module")
def tiny_run(data, tmp_path_factory) -> Path:
    aux, target = data
    out = tmp_path_factory.mktemp("safety_run") / "run"
    assert spg_main(["run", "--aux", aux, "--target", target, "--out", str(out), *TINY_RUN_ARGS]) == 0
    return out


def _run_args(data: tuple[str, str], out: Path, *extra: str) -> list[str]:
    return ["run", "--aux", data[0], "--target", data[1], "--out", str(out), *TINY_RUN_ARGS, *extra]


def test_a_folder_holding_a_run_is_refused_without_overwrite(tiny_run, data, capsys):
    before = _tree(tiny_run)
    for args in (_run_args(data, tiny_run), _run_args(data, tiny_run, "--k", "8")):
        assert spg_main(args) == 2
        err = capsys.readouterr().err
        assert "already holds" in err and "--overwrite" in err
    assert _tree(tiny_run) == before


def test_a_run_under_way_refuses_a_second_writer_and_keeps_its_files(tiny_run, data, capsys):
    before = _tree(tiny_run)
    proc = _holder(tiny_run, "spg run --out first")
    try:
        assert spg_main(_run_args(data, tiny_run, "--overwrite")) == 2
        assert spg_main(["eval", "--run", str(tiny_run), "--device", "cpu", "--quiet"]) == 2
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err
    assert err.count(f"pid {proc.pid}") == 2 and "spg run --out first" in err
    assert _tree(tiny_run) == before and not staging_path(tiny_run).exists()


def test_overwrite_replaces_the_run_whole(tiny_run, data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    assert spg_main(_run_args(data, out, "--k", "8", "--overwrite")) == 0
    assert "guides changed" not in capsys.readouterr().err  # the misleading note of an overwrite
    assert json.loads((out / "config.json").read_text())["sae"]["k"] == 8
    assert json.loads((out / "sae.json").read_text())["config"]["k"] == 8
    assert inconsistent_artifacts(RunDir(out)) == [] and RunDir(out).stale_artifacts() == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging or replaced folder left


@pytest.fixture
def mixed_run(tiny_run, data, tmp_path) -> Path:
    """A run folder holding parts of two runs: config and guides of one, the SAE of another (k 8)."""
    other = tmp_path / "other"
    assert spg_main(_run_args(data, other, "--k", "8")) == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_run, mixed)
    for name in ("sae.safetensors", "sae.json"):
        shutil.copy(other / name, mixed / name)
    return mixed


def test_an_inconsistent_run_is_called_so_and_refused(mixed_run, capsys):
    assert inconsistent_artifacts(RunDir(mixed_run)) == ["sae.safetensors", "sae.json"]
    health = check_run(mixed_run)
    assert health.status == "inconsistent" and any("inconsistent run" in p for p in health.problems)
    for args in (
        ["eval", "--run", str(mixed_run), "--device", "cpu", "--quiet"],
        ["report", "--run", str(mixed_run)],
        ["train-guides", "--run", str(mixed_run), "--device", "cpu", "--quiet"],
    ):
        assert spg_main(args) == 2, args
        err = capsys.readouterr().err
        assert "inconsistent run: sae.safetensors, sae.json" in err and "Traceback" not in err


def test_the_runs_page_shows_an_inconsistent_run(mixed_run, monkeypatch):
    at = open_app(mixed_run.parent, monkeypatch, run="mixed")
    status = dict(zip(*(frame_with(at, "run", "status")[c] for c in ("run", "status"))))
    assert status["mixed"] == "inconsistent" and status["other"] == "no atoms"
    assert "inconsistent run" in texts(at)


def test_report_refuses_maps_and_scores_that_disagree(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    scores = run / SCORES_FILE
    scores.write_text("\n".join(scores.read_text().splitlines()[:-2]) + "\n")  # two rows short
    assert spg_main(["report", "--run", str(run)]) == 2
    assert "rows but the maps file has" in capsys.readouterr().err
    shutil.copy(tiny_run / SCORES_FILE, scores)
    probs, s, meta = RunDir(run).read_target()
    save_tensors(run / PATCH_MAPS_FILE, {"probs": probs[:, :2, :2].contiguous(), "scores": s}, meta)
    assert spg_main(["report", "--run", str(run)]) == 2  # maps of the wrong grid size
    assert "target maps do not fit" in capsys.readouterr().err


def _image(path: Path, size: tuple[int, int] = (64, 64)) -> str:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


def test_predict_shortens_a_long_name_and_records_it(tiny_run, tmp_path, capsys):
    long_dir = tmp_path / ("d" * 200)
    long_dir.mkdir()
    src = _image(long_dir / ("x" * 230 + ".png"))  # a 240-character file name
    out = tmp_path / "pred"
    assert spg_main(["predict", "--run", str(tiny_run), src, "--out", str(out), "--device", "cpu"]) == 0
    rows = (out / "scores.csv").read_text().splitlines()
    (written,) = [p.name for p in out.glob("*_map.png")]
    assert len(written.encode()) <= MAX_NAME_BYTES and written in rows[1] and src in rows[1]


def test_predict_skip_bad_writes_its_tables_whatever_one_file_does(tiny_run, tmp_path, monkeypatch, capsys):
    good = [_image(tmp_path / f"{i}.png") for i in range(3)]
    real = predict.atomic_path

    def refuse_one(path):  # the disk refuses the second map
        if Path(path).name.startswith("1_"):
            raise SPGError("cannot write: the disk is full (ENOSPC)", path=str(path))
        return real(path)

    monkeypatch.setattr(predict, "atomic_path", refuse_one)
    out = tmp_path / "pred"
    args = ["predict", "--run", str(tiny_run), *good, "--out", str(out), "--device", "cpu"]
    assert spg_main([*args, "--skip-bad"]) == 0
    assert [s["image"] for s in json.loads((out / "skipped.json").read_text())] == [good[1]]
    assert len((out / "scores.csv").read_text().strip().splitlines()) == 1 + 2


def test_a_refused_predict_leaves_no_empty_folder(tiny_run, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "pred"
    assert spg_main(["predict", "--run", str(tiny_run), str(bad), "--out", str(out), "--device", "cpu"]) == 2
    assert "bad.png" in capsys.readouterr().err and not out.exists()


def test_predict_warns_about_an_extreme_aspect_ratio(tiny_run, tmp_path, capsys):
    src = _image(tmp_path / "strip.png", (400, 2))
    assert spg_main(["predict", "--run", str(tiny_run), src, "--out", str(tmp_path / "p"), "--device", "cpu"]) == 0
    assert "strip.png: 400 x 2 px (aspect 200:1) is stretched" in capsys.readouterr().err
