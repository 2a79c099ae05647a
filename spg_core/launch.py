"""`spg dashboard`: start SPG Studio (a Streamlit app) over a runs root.

The app lives in `dashboard/app.py` (entrypoint) and `pages/` (one script per
page). It learns its runs root from the `SPG_RUNS_ROOT` environment variable,
which this launcher sets for the Streamlit subprocess; nothing outside that
root is reachable from the app.

    spg dashboard                     # ./runs on http://localhost:8501
    spg dashboard --demo              # serve at once; build the missing demo runs in the background
    spg dashboard --runs DIR --port P
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import SPGError
from .limits import MAX_UPLOAD_BYTES, RUNS_ENV
from .paths import CACHE_ENV, cache_root

MAX_UPLOAD_MB = MAX_UPLOAD_BYTES // 2**20

# One theme for every launch (the app also works unthemed, e.g. under AppTest).
# Colours are taken from the map colour scale's anchors so the chrome matches the maps.
THEME: dict[str, str] = {
    "theme.base": "light",
    "theme.primaryColor": "#1E3C96",
    "theme.backgroundColor": "#FFFFFF",
    "theme.secondaryBackgroundColor": "#F2F4FA",
    "theme.textColor": "#141A33",
    "theme.font": "sans-serif",
    "theme.sidebar.backgroundColor": "#0F1430",
    "theme.sidebar.secondaryBackgroundColor": "#1C2348",
    "theme.sidebar.textColor": "#E8ECF8",
    "theme.sidebar.primaryColor": "#FAAA28",
}


def app_path() -> Path:
    """The Streamlit entrypoint, `dashboard/app.py`, found as package data (a wheel, an editable
    install or a source tree alike). Only the file is looked up: no dashboard code runs here."""
    try:
        path = Path(str(resources.files("dashboard") / "app.py"))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise SPGError(
            "the dashboard app is not installed beside spg_core",
            path=str(path or "dashboard/app.py"),
            fix="reinstall SPG Studio (`pip install spg-studio`, or `pip install -e .` in its source tree)",
        )
    return path


def streamlit_command(port: int, host: str = "localhost") -> list[str]:
    """The `streamlit run` command line: headless, no usage stats, no file watching."""
    flags = {
        "server.headless": "true",
        "server.port": str(port),
        "server.address": host,
        "server.fileWatcherType": "none",  # a demo server must not rerun on file edits
        "server.runOnSave": "false",
        "server.maxUploadSize": str(MAX_UPLOAD_MB),
        "browser.gatherUsageStats": "false",
        "client.toolbarMode": "minimal",
        **THEME,
    }
    cmd = [sys.executable, "-m", "streamlit", "run", str(app_path())]
    return cmd + [f"--{k}={v}" for k, v in flags.items()]


def app_env(runs_root: str | Path, cache_dir: str | Path | None = None) -> dict[str, str]:
    """Environment for the app process: the runs root (absolute) and optionally the token cache."""
    env = dict(os.environ)
    env[RUNS_ENV] = str(Path(runs_root).resolve())
    if cache_dir is not None:
        env[CACHE_ENV] = str(cache_root(cache_dir).resolve())
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (tests and benchmarks start servers on it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def check_port_free(port: int, host: str = "localhost") -> None:
    """SPGError naming `port` and what holds it when it cannot be bound on `host` (so the dashboard
    never announces a URL that another server answers)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SPGError(
                f"port {port} on {host} is not available ({exc.strerror}); it is held by {port_holder(port)}",
                fix=f"stop that process, or pass another port: `spg dashboard --port {free_port()}`",
            ) from None


def port_holder(port: int) -> str:
    """'pid N (command)' of the process listening on TCP `port`, from /proc (Linux); a plain
    'another process' where that cannot be told (other systems, or another user's process)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    pid = fd_dir.parent.name
                    cmd = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    return f"pid {pid} ({' '.join(cmd.split())[:120]})"
        except OSError:
            continue
    return "another process"


def start_server(
    runs_root: str | Path,
    port: int,
    *,
    host: str = "localhost",
    cache_dir: str | Path | None = None,
    quiet: bool = False,
) -> subprocess.Popen:
    """Start the app as a subprocess (its own process group, so it can be stopped as a whole)."""
    out: Any = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(
        streamlit_command(port, host),
        env=app_env(runs_root, cache_dir),
        stdout=out,
        stderr=out,
        start_new_session=True,
    )


def wait_until_healthy(
    port: int, proc: subprocess.Popen | None = None, host: str = "localhost", timeout: float = 60.0
) -> None:
    """Poll Streamlit's health endpoint until it answers 'ok' (or the process dies)."""
    url = f"http://{host}:{port}/_stcore/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SPGError(
                f"the dashboard server exited with code {proc.returncode}",
                fix="run `spg dashboard` in a terminal to see its output",
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise SPGError(
        f"the dashboard did not answer on {url} within {timeout:.0f} s",
        fix="check that the port is free, or pass another with --port",
    )


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate the server started by `start_server` (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_demo_builder(runs_root: Path, cache_dir: str | None = None) -> subprocess.Popen:
    """The background job of `--demo`: `python -m spg_core.demo` builds every missing demo run, one after
    another (two at once would halve each on a small CPU), and reports its progress in the runs root."""
    runs_root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "spg_core.demo", "--runs", str(runs_root)]
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    with open(runs_root / ".demo_build.log", "ab") as log:  # the builder's own output, for a failed build
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),  # the folder holding spg_core
            preexec_fn=lambda: os.nice(10),  # the server's page loads come before the build's speed
        )


def cmd_dashboard(args: argparse.Namespace) -> None:
    root = Path(args.runs).resolve()
    builders: list[subprocess.Popen] = []
    if not args.demo and not root.is_dir():
        print(f"note: {root} does not exist yet; the dashboard will say how to make a run", flush=True)
    check_port_free(args.port, args.host)
    print(f"SPG Studio on http://{args.host}:{args.port}  (runs: {root}; Ctrl-C to stop)", flush=True)
    proc = start_server(root, args.port, host=args.host, cache_dir=args.cache_dir)
    # The server runs in its own session (so it can be stopped as a group): stop it whenever this
    # process ends, on Ctrl-C or on a plain `kill` (SIGTERM would otherwise orphan it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.demo:
            # The demo runs are built beside the server (about a minute each on a CPU the first time), started
            # once it answers: on a small CPU the builder's imports would otherwise delay the server by a
            # minute. The pages show the build's progress and fill in as runs land.
            wait_until_healthy(args.port, proc, host=args.host, timeout=300)
            builders = [start_demo_builder(root, args.cache_dir)]
            print(f"building the missing demo runs in the background (log: {root / '.demo_build.log'})", flush=True)
        code = proc.wait()
        if code not in (0, -signal.SIGINT, -signal.SIGTERM):
            raise SPGError(
                f"the dashboard server exited with code {code}",
                fix="see its output above; run `spg dashboard` again once the cause is fixed",
            )
    finally:
        stop_server(proc)
        for builder in builders:  # a half-built demo run is rebuilt by the next --demo
            stop_server(builder)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `spg dashboard` (shared by the full CLI and the light entry point)."""
    p.add_argument("--runs", default="runs", help="runs root: every run directory under it is shown (default ./runs)")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="localhost", help="address to bind (default localhost; 0.0.0.0 for a LAN)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="build the demo runs (synthetic-a -> synthetic-b: effnet-lite0, then builtin) in the "
        "background if they are missing; the dashboard serves at once and fills in as they land",
    )
    p.add_argument(
        "--cache-dir", default=None, help="token stores and synthetic data (default $SPG_CACHE or ~/.cache/spg)"
    )
    p.set_defaults(func=cmd_dashboard)
    return p


def register_cli(sub: Any) -> None:
    """Add `spg dashboard` to the CLI (called by spg_core.cli)."""
    add_arguments(sub.add_parser("dashboard", help="open SPG Studio, the interactive dashboard over your runs"))


def main(argv: list[str]) -> int:
    """`spg dashboard ARGS` without the engine's imports (see spg_core.entry)."""
    args = add_arguments(argparse.ArgumentParser(prog="spg dashboard")).parse_args(argv)
    try:
        cmd_dashboard(args)
    except SPGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
