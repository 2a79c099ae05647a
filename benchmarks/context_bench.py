"""SPG, SPG + atom-space context and self-nn side by side on trained runs (spg_core/methods.py).

The context only changes scoring, so one trained run gives all three figures on its own target
tokens. The context's form and weight come from a `spg select --context-grid` on the run's
auxiliary set (its select.json), never from the target. Prints one row per run and method and
writes OUT (JSON).

    python benchmarks/context_bench.py --select SEL/select.json --runs RUN1,RUN2 --out context.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from spg_core.atomic import write_json
from spg_core.context import selected_context
from spg_core.methods import METHODS, METRICS, compare_methods


def bench_run(run: str, form: str, weight: float) -> dict:
    """Figures of the three methods on one run, and the run's own metrics.json for a cross-check."""
    t0 = time.perf_counter()
    found = compare_methods(run, form, weight)
    stored = json.loads((Path(run) / "metrics.json").read_text())["mean"]
    return {
        "run": run,
        "form": form,
        "weight": weight,
        "seconds": time.perf_counter() - t0,
        "methods": {m: {k: found[m]["mean"][k] for k in METRICS} for m in METHODS},
        "run_metrics": {k: stored[k] for k in METRICS},  # plain SPG runs: equals the SPG row
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--select", required=True, help="select.json of `spg select --context-grid` on the aux set")
    p.add_argument("--runs", required=True, help="comma-separated run directories (trained on that aux set)")
    p.add_argument("--out", required=True, help="JSON file for the figures")
    args = p.parse_args(argv)
    form, weight = selected_context(args.select)
    rows = []
    for run in args.runs.split(","):
        row = bench_run(run, form, weight)
        rows.append(row)
        print(f"{run}  (context {form} {weight:g}, {row['seconds']:.0f} s)")
        for m in METHODS:
            print(f"  {m:<14} " + " / ".join(f"{row['methods'][m][k]:.3f}" for k in METRICS))
        print(f"  {'metrics.json':<14} " + " / ".join(f"{row['run_metrics'][k]:.3f}" for k in METRICS))
    write_json(Path(args.out), {"select": args.select, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
