"""Overwrite only when asked, and only whole: where `spg run` / `spg train-sae` build a run.

    --out is new, or holds no run               build in place
    --out holds an unfinished run of the same   resume in place (the same command after a crash)
      settings (its `run` fingerprint)
    --out holds any other run                   refused, unless --overwrite:
    ... with --overwrite                        build in RUN/../.NAME.staging, then swap it in by
                                                rename when complete; until then RUN is untouched

The swap renames RUN to .NAME.replaced, the staging folder to RUN, then deletes the old run
(SIGINT is held back meanwhile). A swap cut off by kill -9 is finished by the next command
that opens the folder (`finish_swap`). The next `--overwrite` resumes a staging folder of the
same settings (its token stores and training checkpoints under RUN/checkpoints/ come along)
and removes one of other settings. Callers hold the run folder's lock (run_lock.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from .consistency import fingerprint
from .errors import SPGError
from .run_lock import command_line, run_lock
from .runs import CONFIG_FILE, RunDir


def staging_path(out: Path) -> Path:
    """The staging folder beside `out` (hidden: the dashboard lists no dot-folders)."""
    return out.parent / f".{out.name}.staging"


def replaced_path(out: Path) -> Path:
    """Where the old run waits during a swap."""
    return out.parent / f".{out.name}.replaced"


def holds_run(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file()


def run_fingerprint(folder: Path) -> str | None:
    """The `run` fingerprint of the settings in folder/config.json (None when absent or unreadable)."""
    try:
        return fingerprint(RunDir(folder).read_config(), "run")
    except SPGError:
        return None


def finish_swap(out: Path) -> None:
    """Complete a swap cut off between its renames: the new run goes in, the old one goes."""
    old, staging = replaced_path(out), staging_path(out)
    if not old.exists():
        return
    if not out.exists():
        os.rename(staging if staging.is_dir() else old, out)
    if old.exists():
        shutil.rmtree(old)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold SIGINT back for a few renames (delivered after them); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def swap_in(staging: Path, out: Path) -> None:
    """Replace run `out` by the complete run in `staging`, by renames."""
    with _sigint_held():
        os.rename(out, replaced_path(out))
        os.rename(staging, out)
    shutil.rmtree(replaced_path(out))


@contextlib.contextmanager
def build_folder(out: str | Path, settings: dict, *, overwrite: bool, done_file: str) -> Iterator[Path]:
    """Yield the folder to build the run in (see the module doc); on success, swap a staged run in.

    `settings`: the new run's config dict; `done_file`: the artifact that marks the command's run
    finished (metrics.json for `spg run`, sae.json for `spg train-sae`). The caller holds out's lock."""
    out = Path(out)
    finish_swap(out)
    if not holds_run(out):
        yield out
        return
    same = run_fingerprint(out) == fingerprint(settings, "run")
    if same and not (out / done_file).is_file():
        print(f"resuming the unfinished run in {out} (same settings)", file=sys.stderr)
        yield out
        return
    if not overwrite:
        what = "this run, finished" if same else "another run"
        raise SPGError(
            f"--out already holds {what}; refusing to write over it",
            path=str(out),
            fix="pass --overwrite to replace it (the new run is built beside it and swapped in only when "
            "complete), or choose another --out",
        )
    staging = staging_path(out)
    if staging.exists():
        if run_fingerprint(staging) == fingerprint(settings, "run"):
            print(f"resuming the unfinished overwrite in {staging}", file=sys.stderr)
        else:
            print(f"removing an unfinished overwrite of other settings: {staging}", file=sys.stderr)
            with run_lock(staging, command_line()):  # refuses if another writer still builds there
                pass
            shutil.rmtree(staging)
    with run_lock(staging, command_line()):
        yield staging
        swap_in(staging, out)
    print(f"replaced the run in {out}", file=sys.stderr)
