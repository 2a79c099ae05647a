"""How long `spg dashboard --demo` takes to answer on a fresh machine: from the command to the server's
health endpoint, with an empty runs root and an empty token cache (nothing built, nothing extracted).

    python benchmarks/demo_start.py [--repeats 3] [--land]

Each repeat starts the command in a fresh temporary folder (runs root and SPG_CACHE both new), polls
http://localhost:PORT/_stcore/health every 0.1 s, and prints the seconds until it answers "ok"; then the
command is stopped (its background demo build with it). With --land, the first repeat also waits for the
first demo run to land (its progress entry says "done") and prints that time: the build runs beside the
server, so the pages fill in then. Target: the server answers within 30 s of the command.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from spg_core.demo import DEMO_NAME, read_demo_progress  # noqa: E402
from spg_core.launch import free_port  # noqa: E402

TARGET_S = 30.0


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://localhost:{port}/_stcore/health", timeout=1) as resp:
            return resp.read().strip() == b"ok"
    except OSError:
        return False


def one_start(work: Path, land: bool, timeout: float = 600.0) -> tuple[float, float | None]:
    """(seconds from the command to a healthy server, seconds to the first demo run's landing or None)."""
    port = free_port()
    env = {**os.environ, "SPG_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "spg_core.entry",
        "dashboard",
        "--demo",
        "--runs",
        str(work / "runs"),
        "--port",
        str(port),
    ]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=str(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not healthy(port):
            if proc.poll() is not None or time.monotonic() - start > timeout:
                raise RuntimeError(f"the dashboard did not answer (exit code {proc.poll()})")
            time.sleep(0.1)
        answered = time.monotonic() - start
        landed = None
        while land and time.monotonic() - start < timeout:
            if read_demo_progress(work / "runs").get(DEMO_NAME, {}).get("stage") == "done":
                landed = time.monotonic() - start
                break
            time.sleep(1.0)
        return answered, landed
    finally:
        proc.send_signal(signal.SIGTERM)  # cmd_dashboard stops the server and the builder on SIGTERM
        proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--land", action="store_true", help="also time the first demo run's landing (minutes)")
    args = parser.parse_args()
    times = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="spg_demo_start_") as tmp:
            answered, landed = one_start(Path(tmp), land=args.land and i == 0)
        times.append(answered)
        extra = "" if landed is None else f"; first demo run landed after {landed:.1f} s"
        print(f"start {i + 1}: answering after {answered:.1f} s{extra}", flush=True)
    print(
        f"spg dashboard --demo, fresh runs root and cache: answering after median {statistics.median(times):.1f} s, "
        f"max {max(times):.1f} s over {len(times)} starts (target < {TARGET_S:.0f} s)"
    )


if __name__ == "__main__":
    main()
