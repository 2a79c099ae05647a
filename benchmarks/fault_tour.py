"""The run-folder part of the bad-input and fault tour, runnable against any source tree.

    python benchmarks/fault_tour.py --work /tmp/tour                 # this tree
    python benchmarks/fault_tour.py --work /tmp/tour0 --tree OLD     # e.g. an export of an older commit

Each case runs the real `spg` CLI in a subprocess (PYTHONPATH = the tree) on tiny synthetic
data (dinov3-vitl16-tiny) and prints one line: the case, what happened, and the outcome:

    refused     a named error (exit 2, `error:` and a fix, no traceback), or a warning where one is due
    correct     the command did the right thing
    traceback   a Python traceback
    silent      exit 0 with a wrong or mixed result, or no warning where one is due
    data lost   a finished run's files were changed without being asked to
    late        refused only after the work it could have been refused before, without naming the option

The tests in tests/test_run_safety.py and tests/test_interrupt.py assert the same cases.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers.tiny_data import TINY_RUN_ARGS, tiny_pair  # noqa: E402  (tests/helpers, shared with the tests)


class Tour:
    def __init__(self, tree: Path, work: Path):
        self.tree, self.work = tree, work
        self.env = {**os.environ, "PYTHONPATH": str(tree), "SPG_CACHE": str(work / "cache")}
        self.aux, self.target = tiny_pair(work / "data")

    def spg(self, *args: str, timeout: float = 600, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
        cmd = [*(prefix or [sys.executable, "-m", "spg_core.cli"]), *args]
        return subprocess.run(cmd, env=self.env, cwd=self.tree, capture_output=True, text=True, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "spg_core.cli", *args]
        return subprocess.Popen(cmd, env=self.env, cwd=self.tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run_args(self, out: Path, *extra: str) -> list[str]:
        return ["run", "--aux", self.aux, "--target", self.target, "--out", str(out), *TINY_RUN_ARGS, *extra]

    def fresh_run(self, name: str, *extra: str) -> Path:
        out = self.work / name
        shutil.rmtree(out, ignore_errors=True)
        done = self.spg(*self.run_args(out, *extra))
        assert done.returncode == 0, done.stderr
        return out


def outcome(done: subprocess.CompletedProcess) -> str:
    if "Traceback" in done.stderr:
        return "traceback"
    return "refused" if done.returncode == 2 and "error:" in done.stderr else "correct"


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def mixed(folder: Path) -> bool:
    """config.json and the SAE record disagree on k: parts of two runs."""
    cfg, sae = (json.loads((folder / n).read_text()) for n in ("config.json", "sae.json"))
    return cfg["sae"]["k"] != sae["config"]["k"]


def image(path: Path, size: tuple[int, int] = (64, 64)) -> str:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


# -- the cases -------------------------------------------------------------------------------------


def onto_a_finished_run(t: Tour) -> tuple[str, str]:
    out = t.fresh_run("finished")
    old = files(out)
    done = t.spg(*t.run_args(out, "--k", "8"))
    return ("data lost" if files(out) != old else outcome(done)), f"rc {done.returncode}"


def two_writers(t: Tour) -> tuple[str, str]:
    out = t.work / "two"
    shutil.rmtree(out, ignore_errors=True)
    first = t.popen(*t.run_args(out, "--sae-epochs", "300"))
    while not (out / "config.json").exists() and first.poll() is None:
        time.sleep(0.1)
    second = t.spg(*t.run_args(out, "--k", "8"))
    first.wait(timeout=900)
    if mixed(out):
        return "silent", f"rc {first.returncode} and {second.returncode}; config and SAE from different runs"
    return outcome(second), f"second rc {second.returncode}, first rc {first.returncode}, run consistent"


def interrupted_rerun(t: Tour) -> tuple[str, str]:
    out = t.fresh_run("interrupted")
    old = files(out)
    args = t.run_args(out, "--sae-epochs", "3000", "--k", "8")
    help_text = t.spg("run", "--help").stdout
    proc = t.popen(*args, *(["--overwrite"] if "--overwrite" in help_text else []))
    marker = out.parent / f".{out.name}.staging" / "config.json"
    start, old_config = time.monotonic(), (out / "config.json").read_bytes()
    while time.monotonic() - start < 300 and proc.poll() is None:  # until the new run is training
        if marker.exists() or (out / "config.json").read_bytes() != old_config:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    return ("data lost" if files(out) != old else "correct"), f"rc {proc.returncode}"


def predict_long_name(t: Tour, run: Path) -> tuple[str, str]:
    folder = t.work / ("d" * 200)
    folder.mkdir(exist_ok=True)
    src = image(folder / ("x" * 236 + ".png"))
    done = t.spg("predict", "--run", str(run), src, "--out", str(t.work / "pred_long"), "--device", "cpu")
    return outcome(done), f"rc {done.returncode}"


def predict_skip_bad_long_name(t: Tour, run: Path) -> tuple[str, str]:
    good = image(t.work / "good.png")
    src = str(next((t.work / ("d" * 200)).glob("*.png")))
    out = t.work / "pred_skip"
    shutil.rmtree(out, ignore_errors=True)
    done = t.spg("predict", "--run", str(run), good, src, "--out", str(out), "--device", "cpu", "--skip-bad")
    if (out / "scores.csv").is_file():
        return ("correct" if "Traceback" not in done.stderr else "traceback"), "scores.csv written"
    return ("traceback" if "Traceback" in done.stderr else "silent"), "no scores.csv"


def refused_predict_folder(t: Tour, run: Path) -> tuple[str, str]:
    bad = t.work / "bad.png"
    bad.write_bytes(b"not an image")
    out = t.work / "pred_refused"
    shutil.rmtree(out, ignore_errors=True)
    done = t.spg("predict", "--run", str(run), str(bad), "--out", str(out), "--device", "cpu")
    if out.exists():
        return "silent", f"rc {done.returncode}; an empty {out.name}/ left behind"
    return outcome(done), f"rc {done.returncode}; no folder left"


def report_scores_mismatch(t: Tour, run: Path) -> tuple[str, str]:
    """scores.csv with two rows more than the maps file has maps (from another evaluation)."""
    copy = t.work / "long_scores"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    scores = copy / "target" / "scores.csv"
    lines = scores.read_text().splitlines()
    extra = [f"{len(lines) - 1 + i},{line.split(',', 1)[1]}" for i, line in enumerate(lines[-2:])]
    scores.write_text("\n".join(lines + extra) + "\n")
    done = t.spg("report", "--run", str(copy))
    if done.returncode == 0:  # rows and maps of different evaluations: no report of them is right
        return "silent", "rc 0: a report pairing maps and rows that do not belong together"
    return outcome(done), f"rc {done.returncode}"


def wrong_grid_maps(t: Tour, run: Path) -> tuple[str, str]:
    copy = t.work / "wrong_grid"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(run, copy)
    code = (
        "import sys; from spg_core.runs import RunDir; from spg_core.atomic import save_tensors\n"
        "from spg_core.cli import main\n"
        "r = RunDir(sys.argv[1]); p, s, m = r.read_target()\n"
        "save_tensors(r.file('target/patch_maps.safetensors'), {'probs': p[:, :2, :2].contiguous(), 'scores': s}, m)\n"
        "try:\n    r.read_target()\nexcept Exception as e:\n    print('error:', e, file=sys.stderr); sys.exit(2)\n"
    )
    done = t.spg("-c", code, str(copy), prefix=[sys.executable])
    return ("silent" if done.returncode == 0 else outcome(done)), "the dashboard's read of the maps"


def port_taken(t: Tour) -> tuple[str, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        try:
            done = t.spg("dashboard", "--runs", str(t.work), "--port", str(port), timeout=90)
        except subprocess.TimeoutExpired:
            return "silent", "still running after 90 s on a taken port"
    if done.returncode == 0:
        return "silent", "exit 0"
    return outcome(done), f"rc {done.returncode}"


def guide_lr_inf(t: Tour) -> tuple[str, str]:
    start = time.monotonic()
    done = t.spg(*t.run_args(t.work / "inf", "--guide-lr", "inf"))
    named = "--guide-lr" in done.stderr
    took = time.monotonic() - start
    if done.returncode == 2 and not named:
        return "late", f"refused after {took:.0f} s without naming the flag"
    return outcome(done), f"rc {done.returncode} after {took:.0f} s"


def sae_epochs_zero(t: Tour) -> tuple[str, str]:
    out = t.work / "zero"
    shutil.rmtree(out, ignore_errors=True)
    args = t.run_args(out)
    args[args.index("--sae-epochs") + 1] = "0"
    done = t.spg(*args)
    warned = "--sae-epochs 0" in done.stderr
    return ("refused" if warned else "silent"), f"rc {done.returncode}, {'a' if warned else 'no'} warning"


def extreme_aspect(t: Tour, run: Path) -> tuple[str, str]:
    src = image(t.work / "strip.png", (4000, 2))
    done = t.spg("predict", "--run", str(run), src, "--out", str(t.work / "pred_strip"), "--device", "cpu")
    warned = "stretched" in done.stderr
    return ("refused" if warned else "silent"), f"rc {done.returncode}, {'a' if warned else 'no'} warning"


def file_size_limit(t: Tour) -> tuple[str, str]:
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from spg_core.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env_cache = t.work / "fsize_cache"
    shutil.rmtree(env_cache, ignore_errors=True)
    args = ["extract", "--dataset", t.aux, "--backbone", "dinov3-vitl16-tiny", "--device", "cpu", "--quiet"]
    done = t.spg("-c", code, *args, "--cache-dir", str(env_cache), prefix=[sys.executable])
    return outcome(done), f"rc {done.returncode}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", default=str(REPO), help="source tree to run (default: this one)")
    p.add_argument("--work", required=True, help="scratch folder")
    p.add_argument("--only", default=None, help="run only the cases whose name contains this")
    args = p.parse_args()
    tour = Tour(Path(args.tree).resolve(), Path(args.work).resolve())
    tour.work.mkdir(parents=True, exist_ok=True)
    run = tour.fresh_run("base")
    cases = {
        "spg run onto a finished run": lambda: onto_a_finished_run(tour),
        "two spg run on one --out": lambda: two_writers(tour),
        "SIGINT during a re-run over a finished run": lambda: interrupted_rerun(tour),
        "predict, 240-character file name": lambda: predict_long_name(tour, run),
        "predict --skip-bad, one long name": lambda: predict_skip_bad_long_name(tour, run),
        "refused predict": lambda: refused_predict_folder(tour, run),
        "report, scores.csv 2 rows more than maps": lambda: report_scores_mismatch(tour, run),
        "patch maps of the wrong grid": lambda: wrong_grid_maps(tour, run),
        "dashboard --port taken": lambda: port_taken(tour),
        "--guide-lr inf": lambda: guide_lr_inf(tour),
        "--sae-epochs 0": lambda: sae_epochs_zero(tour),
        "a 4000 x 2 image": lambda: extreme_aspect(tour, run),
        "ulimit -f during spg extract": lambda: file_size_limit(tour),
    }
    counts: Counter[str] = Counter()
    for name, case in cases.items():
        if args.only and args.only not in name:
            continue
        result, detail = case()
        counts[result] += 1
        print(f"{name:<44} {result:<10} {detail}", flush=True)
    print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


if __name__ == "__main__":
    main()
