"""One writer per run folder: an OS-level lock on RUN/.lock.

Every command that writes into a run folder holds `run_lock(folder, command)` while it
writes. The lock is `fcntl.flock` on RUN/.lock, so the kernel drops it when its holder
exits in any way (kill -9 included): a lock left by a dead process is simply free, and
the next writer takes it over, saying whose it was. The holder writes its pid and
command into the file so that a refused writer can name it.

The lock is re-entrant within one process (the CLI takes it, then the engine function it
calls takes it again), is never taken by readers, and under torchrun is taken by rank 0
alone (the only rank that writes run files).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import distributed
from .errors import SPGError

LOCK_FILE = ".lock"
# Folders this process holds: resolved path -> lock fd. Module state because a lock is a
# property of the process, not of one call.
_HELD: dict[Path, int] = {}


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(fd: int) -> dict[str, Any]:
    """The {pid, command, since} a lock file records ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        holder = json.loads(text) if text.strip() else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it recorded no pid)"
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
    return f"pid {holder.get('pid', '?')} (`{holder.get('command', '?')}`){when}"


def _acquire(folder: Path, command: str) -> int:
    """Open and flock RUN/.lock without waiting; the fd on success, SPGError naming the holder if held."""
    path = folder / LOCK_FILE
    for _ in range(5):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise SPGError(
                f"another command is writing this run folder: {_describe(holder)}",
                path=str(folder),
                fix="wait for it to finish (or stop it), or write to another folder",
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the folder was swapped away while we waited
            same = False
        if same:
            break
        os.close(fd)  # locked a file that was renamed away meanwhile: lock the current one
    else:
        raise SPGError("the run folder's lock file keeps changing", path=str(path), fix="try again")
    previous = read_holder(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid() and not pid_alive(int(previous["pid"])):
        print(f"note: took over the lock of {_describe(previous)}, which is no longer running", file=sys.stderr)
    record = json.dumps({"pid": os.getpid(), "command": command, "since": time.time()})
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode(), 0)
    return fd


@contextlib.contextmanager
def run_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the write lock of `folder` (created if absent) for the block; yield the folder.

    Raises SPGError at once, naming the holder's pid and command, when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD or not distributed.is_main():
        yield folder
        return
    fd = _acquire(key, command)
    _HELD[key] = fd
    try:
        yield folder
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a released lock names nobody
        os.close(fd)


def holds_lock(folder: str | Path) -> bool:
    """Whether this process holds `folder`'s lock."""
    return Path(folder).resolve() in _HELD


def command_line() -> str:
    """This process's command as the user typed it (for the lock record)."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]
