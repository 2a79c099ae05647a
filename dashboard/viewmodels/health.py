"""Run health: which artifacts a run has, its status, and the overview of every run in a root."""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from spg_core.atomic import read_json
from spg_core.atoms.build import INDEX as ATOM_INDEX
from spg_core.consistency import inconsistency_text, inconsistent_artifacts
from spg_core.demo import read_demo_progress
from spg_core.errors import SPGError
from spg_core.guides import saturation_note
from spg_core.report import METRIC_TITLES, METRICS
from spg_core.run_paths import run_names
from spg_core.runs import (
    CONFIG_FILE as CONFIG,
)
from spg_core.runs import (
    GUIDES_FILE as GUIDES,
)
from spg_core.runs import (
    METRICS_FILE,
    RunDir,
)
from spg_core.runs import (
    PATCH_MAPS_FILE as PATCH_MAPS,
)
from spg_core.runs import (
    SAE_FILE as SAE,
)
from spg_core.runs import (
    SCORES_FILE as SCORES,
)

from .tables import percent

# What each artifact is needed for, in the words a page shows.
ARTIFACTS: dict[str, str] = {
    CONFIG: "run configuration",
    SAE: "SAE dictionary",
    GUIDES: "guides",
    PATCH_MAPS: "target anomaly maps",
    SCORES: "target image scores",
    METRICS_FILE: "metrics",
    ATOM_INDEX: "atom index",
}


def run_signature(path: str | Path) -> tuple[float, ...]:
    """Modification times of a run's artifacts: a cache key that changes when a run is rewritten."""
    path = Path(path)
    return tuple((path / f).stat().st_mtime if (path / f).is_file() else -1.0 for f in ARTIFACTS)


@dataclass
class RunHealth:
    """Which artifacts a run has; `problems` name what is missing or unreadable."""

    path: Path
    present: dict[str, bool] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # complete but questionable, e.g. saturated guides
    stale: list[str] = field(default_factory=list)  # artifacts whose producer changed since
    inconsistent: list[str] = field(default_factory=list)  # artifacts made with other settings than config.json

    def has(self, *files: str) -> bool:
        return all(self.present.get(f, False) for f in files)

    def missing(self, *files: str) -> list[str]:
        return [ARTIFACTS.get(f, f) for f in files if not self.present.get(f, False)]

    @property
    def status(self) -> str:
        if not self.has(CONFIG) or any("truncated or damaged" in p for p in self.problems):
            return "damaged"
        if self.inconsistent:  # parts of two runs, or a command cut off: never "complete"
            return "inconsistent"
        if not self.has(SAE, GUIDES) and not self.has(GUIDES):
            return "training"
        if not self.has(PATCH_MAPS, SCORES, METRICS_FILE):
            return "not evaluated"
        if self.stale:  # maps or metrics from earlier guides (see RunDir.stale_artifacts)
            return "stale"
        return "complete" if self.has(ATOM_INDEX) else "no atoms"


def check_run(path: str | Path) -> RunHealth:
    """Cheap health check: which artifacts exist and whether the JSON ones parse."""
    health = RunHealth(Path(path))
    for name in ARTIFACTS:
        health.present[name] = (health.path / name).is_file()
    for name in ARTIFACTS:
        if name.endswith(".safetensors") and health.present[name] and not safetensors_intact(health.path / name):
            health.present[name] = False
            health.problems.append(f"{ARTIFACTS[name]} truncated or damaged ({name})")
    for name in (CONFIG, METRICS_FILE):
        if health.present[name]:
            try:
                read_json(health.path / name, what=ARTIFACTS[name])
            except SPGError as exc:
                health.present[name] = False
                health.problems.append(str(exc).splitlines()[0] + f" ({name})")
    for name in ARTIFACTS:
        if not health.present[name] and not any(name in p for p in health.problems):
            health.problems.append(f"{ARTIFACTS[name]} missing ({name})")
    health.notes += guide_notes(health.path / "guides.json")
    with contextlib.suppress(SPGError):  # unreadable files are reported as problems above
        health.stale = RunDir(health.path).stale_artifacts()
    with contextlib.suppress(SPGError):
        health.inconsistent = inconsistent_artifacts(RunDir(health.path))
    if health.inconsistent:
        health.problems.append(inconsistency_text(health.path.name, health.inconsistent))
    if health.stale:
        health.notes.append(
            f"stale: {', '.join(health.stale)} were made from earlier inputs; re-run `spg eval --run DIR`"
        )
    return health


def safetensors_intact(path: Path) -> bool:
    """Whether a safetensors file's header parses and its tensors end exactly at the end of the file
    (a cheap check: reads the header only; a half-written or cut file fails it)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return False
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return False
            header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        return 8 + n + max(ends, default=0) == size
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def guide_notes(path: Path) -> list[str]:
    """Warnings about a guides.json's auxiliary fit (empty when fine, absent or unreadable)."""
    try:
        record = read_json(path, what="guide training record") if path.is_file() else {}
    except SPGError:
        return []
    note = saturation_note(record.get("aux_fit"), record.get("config", {}))
    return [note] if note else []


def run_overview(root: str | Path) -> pd.DataFrame:
    """One row per run under `root`: name, direction, backbone, method, status, mean metrics in %."""
    rows = []
    for name in run_names(root):
        path = Path(root).resolve() / name
        health = check_run(path)
        cfg: dict[str, Any] = {}
        mean: dict[str, Any] = {}
        try:
            cfg = read_json(path / CONFIG) if health.has(CONFIG) else {}
            mean = read_json(path / METRICS_FILE).get("mean", {}) if health.has(METRICS_FILE) else {}
        except SPGError:
            pass
        rows.append(
            {
                "run": name,
                "aux": cfg.get("aux", "?"),
                "target": cfg.get("target", "?"),
                "backbone": cfg.get("backbone", "?"),
                "method": cfg.get("method", "?"),
                "status": health.status,
                **{METRIC_TITLES[k]: percent(mean.get(k)) for k in METRICS},
            }
        )
    return pd.DataFrame(rows)


def config_summary(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A run's config.json grouped for display: experiment, SAE, guides, scoring, backbone."""
    top = {k: config.get(k) for k in ("aux", "target", "backbone", "weights", "method", "device_used")}
    return {
        "experiment": top,
        "SAE": dict(config.get("sae", {})),
        "guides": dict(config.get("guides", {})),
        "scoring": dict(config.get("score", {})),
        "backbone": dict(config.get("backbone_identity", {})),
    }


def demo_progress(root: str | Path) -> dict[str, Any] | None:
    """The demo builder's progress in the runs root (spg_core.demo's file, read by spg_core.demo):
    {"text", "fraction" (0-1), "done", "stopped"} for the first demo run not yet built; None when no
    demo build was started there or the file cannot be read. `stopped`: its builder is gone before
    finishing (interrupted or failed), so nothing more will appear until `spg dashboard --demo` runs again."""
    try:
        runs = read_demo_progress(root)
    except SPGError:
        return None
    if not runs:
        return None
    pending = [(name, entry) for name, entry in runs.items() if entry.get("stage") != "done"]
    if not pending:
        return {"text": "every demo run is built", "fraction": 1.0, "done": True, "stopped": False}
    name, entry = pending[0]
    stopped = not entry["alive"] or entry.get("stage") == "failed"
    if stopped:
        why = f": {entry['error']}" if entry.get("error") else ""
        text = f"{name} stopped at '{entry.get('stage', 'queued')}'{why}; run `spg dashboard --demo` again to finish it"
    else:
        text = (
            f"{name}: {entry['stage']} (step {entry['step'] + 1} of {entry['steps']}, {entry['seconds']:.0f} s so far)"
        )
    return {"text": text, "fraction": min(entry["step"] / entry["steps"], 1.0), "done": False, "stopped": stopped}
