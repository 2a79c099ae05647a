"""The built-in demo run: synthetic-a -> synthetic-b with the builtin backbone, no download."""

from __future__ import annotations

from pathlib import Path

from .config import GuideConfig, RunConfig, SAEConfig, ScoreConfig
from .presets import DEMO_PRESET
from .runs import RunDir

DEMO_NAME = "demo-synthetic-builtin"


def demo_config() -> RunConfig:
    p = DEMO_PRESET
    return RunConfig(aux="synthetic-a", target="synthetic-b", backbone="builtin", device="auto",
                     sae=SAEConfig(**p.get("sae", {})), guides=GuideConfig(**p.get("guides", {})),
                     score=ScoreConfig(**p.get("score", {})))


def demo_is_complete(run_dir: str | Path) -> bool:
    run = RunDir(run_dir)
    return all(run.exists(f) for f in ("config.json", "sae.safetensors", "guides.safetensors",
                                       "metrics.json", "target/patch_maps.safetensors", "atoms/index.safetensors"))


def ensure_demo_run(runs_root: str | Path, *, progress: bool = True, cache_dir: str | Path | None = None) -> Path:
    """Build the demo run under `runs_root` unless a complete one is already there. Returns its path."""
    from .atoms import build_atoms
    from .pipeline import run_experiment
    from .report import write_reports

    out = Path(runs_root) / DEMO_NAME
    if demo_is_complete(out):
        return out
    run_experiment(demo_config(), out, cache_dir=cache_dir, progress=progress)
    write_reports(out)
    build_atoms(out, progress=progress)
    return out
