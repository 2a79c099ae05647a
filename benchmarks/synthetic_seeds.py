"""SPG vs the zero-training baseline of the same backbone, over three image seeds of the synthetic sets.

For each backbone preset, seed and direction: `spg run` with the preset (settings fixed in
advance: builtin's frozen the `builtin` preset, effnet's chosen by `spg select` on synthetic-a alone),
and the backbone's zero-training baseline (spg_core.baselines) on the same target tokens.
Prints per-seed figures and mean +- standard deviation over seeds; writes OUT/seeds.json.

    python benchmarks/synthetic_seeds.py --backbones effnet-lite0,builtin --seeds 0,1,2 --out /tmp/seeds
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from spg_core.atomic import write_json
from spg_core.baselines import default_baseline, evaluate_baseline
from spg_core.config import ExtractConfig, GuideConfig, RunConfig, SAEConfig
from spg_core.pipeline import run_experiment
from spg_core.protocols import overrides
from spg_core.store import TokenStore

PRESETS = {"builtin": overrides("builtin"), "effnet-lite0": overrides("effnet")}
KEYS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")
DIRECTIONS = {"a->b": ("synthetic-a", "synthetic-b"), "b->a": ("synthetic-b", "synthetic-a")}


def one(backbone: str, seed: int, direction: str, out: Path, cache_dir: str | None) -> dict:
    aux, target = (f"{d}@seed={seed}" for d in DIRECTIONS[direction])
    preset = PRESETS[backbone]
    cfg = RunConfig(
        aux=aux,
        target=target,
        backbone=backbone,
        device="cpu",
        sae=SAEConfig(**preset["sae"]),
        guides=GuideConfig(**preset["guides"]),
    )
    run = out / f"{backbone}_{direction.replace('->', '_to_')}_seed{seed}"
    t0 = time.perf_counter()
    spg = run_experiment(cfg, run, ExtractConfig(cache_dir=cache_dir, quiet=True))
    store = TokenStore(json.loads((run / "config.json").read_text())["target_store"])
    kind = default_baseline(backbone)
    base = evaluate_baseline(store, kind)
    return {
        "backbone": backbone,
        "seed": seed,
        "direction": direction,
        "baseline": kind,
        "seconds": time.perf_counter() - t0,
        "spg": {k: spg["mean"][k] for k in KEYS},
        "zero_training": {k: base["mean"][k] for k in KEYS},
    }


def summary(rows: list[dict]) -> list[str]:
    lines = []
    for bb, d in sorted({(r["backbone"], r["direction"]) for r in rows}):
        mine = [r for r in rows if (r["backbone"], r["direction"]) == (bb, d)]
        for what in ("spg", "zero_training"):
            cells = []
            for k in KEYS:
                v = np.array([r[what][k] for r in mine])
                cells.append(f"{v.mean():.3f} +- {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
            lines.append(
                f"| {bb} | {d} | {what if what == 'spg' else 'zero-training ' + mine[0]['baseline']} | "
                f"{len(mine)} | " + " | ".join(cells) + " |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="effnet-lite0,builtin")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--directions", default="a->b,b->a")
    p.add_argument("--out", required=True)
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = json.loads((out / "seeds.json").read_text())["rows"] if (out / "seeds.json").is_file() else []
    done = {(r["backbone"], r["seed"], r["direction"]) for r in rows}
    for bb in args.backbones.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for d in args.directions.split(","):
                if (bb, seed, d) in done:
                    continue
                r = one(bb, seed, d, out, args.cache_dir)
                rows.append(r)
                write_json(out / "seeds.json", {"rows": rows})  # resumable: finished cells are kept
                print(
                    f"{bb} seed {seed} {d}: SPG "
                    + " ".join(f"{r['spg'][k]:.3f}" for k in KEYS)
                    + f" | zero-training {r['baseline']} "
                    + " ".join(f"{r['zero_training'][k]:.3f}" for k in KEYS)
                    + f" ({r['seconds']:.0f} s)",
                    flush=True,
                )
    print("\n| backbone | direction | method | seeds | " + " | ".join(KEYS) + " |")
    print("|---|---|---|---|" + "---|" * len(KEYS))
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
