"""What the artefact flags say about a run, and what dropping the flagged atoms does to its metrics.

For each run (atom index built, target evaluated): how many atoms carry each flag, the anomaly and
normal guides' ten largest atoms with their flags and statistics, then the four metrics of the
run as it is, with every flagged guide atom dropped from both guides, and, as the baseline a flag
has to beat, with the same number of guide atoms drawn at random (`--draws` seeded draws, mean and
standard deviation). Flags come from the auxiliary set only; the metrics are the target's.

    python benchmarks/flags_bench.py --runs RUN [RUN ...] [--draws 10] [--out flags.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from spg_core.atomic import write_json
from spg_core.atoms.ablation import Ablator
from spg_core.atoms.build import load_atoms
from spg_core.atoms.flags import FLAGS, flagged_atoms
from spg_core.atoms.ranking import rank_atoms

KEYS = ("image_auroc", "image_ap", "pixel_auroc", "aupro")
SHOWN = ("border_share", "border_band", "position_share", "image_share", "pixel_std", "top_category", "tag")


def _figures(result) -> dict[str, float]:
    return {k: float(result.metrics["mean"][k]) for k in KEYS}


def one_run(run: Path, draws: int) -> dict:
    """Flag counts, the guides' top atoms, and the metrics as is / flagged dropped / random dropped."""
    _, stats = load_atoms(run)
    ablator = Ablator(run, device="cpu")
    flags = stats["flags"].fillna("")
    flagged = flagged_atoms(stats)
    ranks = rank_atoms(ablator.predictor.guides)
    top = {
        guide: [
            {"atom": e["atom"], "share": e["share"], "flags": flags[stats["atom"] == e["atom"]].iloc[0]}
            | {c: stats.loc[stats["atom"] == e["atom"], c].iloc[0] for c in SHOWN if c in stats.columns}
            for e in ranks[guide][:10]
        ]
        for guide in ("anomaly", "normal")
    }
    active = ablator.atoms.tolist()
    dropped = sorted(set(flagged) & set(active))
    rng = np.random.default_rng(0)
    random = [_figures(ablator.drop(rng.choice(active, len(dropped), replace=False).tolist())) for _ in range(draws)]
    # the anomaly guide alone: a border atom of the normal guide may be what explains a clean border away
    anomaly = [e["atom"] for e in ranks["anomaly"]]
    in_anomaly = sorted(set(flagged) & set(anomaly))
    random_anomaly = [
        _figures(ablator.ablate(remove=rng.choice(anomaly, len(in_anomaly), replace=False).tolist(), guide="anomaly"))
        for _ in range(draws)
    ]
    return {
        "run": str(run),
        "atoms": len(stats),
        "alive": int((stats["frequency"] > 0).sum()),
        "flagged": len(flagged),
        "per_flag": {f: int(flags.str.split(",").map(lambda x, f=f: f in x).sum()) for f in FLAGS},
        "dense": int((stats["labels"].fillna("") == "dense").sum()),
        "guide_atoms": len(active),
        "guide_atoms_flagged": len(dropped),
        "flagged_share": {g: float(sum(e["share"] for e in ranks[g] if e["atom"] in set(flagged))) for g in ranks},
        "top": top,
        "as_is": _figures(ablator.baseline()),
        "flagged_dropped": _figures(ablator.drop(dropped)),
        "random_dropped": _spread(random),
        "anomaly_guide_atoms_flagged": len(in_anomaly),
        "flagged_dropped_from_anomaly": _figures(ablator.ablate(remove=in_anomaly, guide="anomaly")),
        "random_dropped_from_anomaly": _spread(random_anomaly),
    }


def _spread(rows: list[dict[str, float]]) -> dict:
    return {
        "draws": len(rows),
        "mean": {k: float(np.mean([r[k] for r in rows])) for k in KEYS},
        "std": {k: float(np.std([r[k] for r in rows])) for k in KEYS},
    }


def report(r: dict) -> list[str]:
    lines = [
        f"== {r['run']}",
        f"{r['flagged']} of {r['atoms']} atoms flagged ({r['alive']} alive): "
        + ", ".join(f"{k} {v}" for k, v in r["per_flag"].items())
        + f"; dense label {r['dense']}",
        f"guide atoms {r['guide_atoms']}, flagged {r['guide_atoms_flagged']}; flagged share of guide mass: "
        + ", ".join(f"{g} {v:.1%}" for g, v in r["flagged_share"].items()),
    ]
    for guide, rows in r["top"].items():
        lines.append(f"top {guide} atoms:")
        for e in rows:
            lines.append(
                f"  #{e['atom']:<5} {e['share']:6.1%}  {e['flags'] or '-':<24}"
                f" border {e.get('border_share', np.nan):.2f}"
                f" ({e.get('border_band', '')}) position {e.get('position_share', np.nan):.2f} images"
                f" {e.get('image_share', np.nan):.2f} pixel std {e.get('pixel_std', np.nan):.3f}"
                f" {e.get('top_category', '')} {e.get('tag', '')}"
            )
    lines.append("                        " + " ".join(f"{k:>12}" for k in KEYS))
    lines.append("as is                   " + " ".join(f"{r['as_is'][k]:12.4f}" for k in KEYS))
    lines.append("flagged dropped         " + " ".join(f"{r['flagged_dropped'][k]:12.4f}" for k in KEYS))
    for name, key in (("random dropped", "random_dropped"), ("random, anomaly guide", "random_dropped_from_anomaly")):
        if key == "random_dropped_from_anomaly":
            lines.append(
                f"flagged, anomaly guide ({r['anomaly_guide_atoms_flagged']})"
                + " ".join(f"{r['flagged_dropped_from_anomaly'][k]:12.4f}" for k in KEYS)
            )
        rd = r[key]
        lines.append(f"{name} (n={rd['draws']})  " + " ".join(f"{rd['mean'][k]:6.4f}±{rd['std'][k]:.4f}" for k in KEYS))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="run folders (atom index built, target evaluated)")
    ap.add_argument("--draws", type=int, default=10, help="random drops of as many guide atoms as are flagged")
    ap.add_argument("--out", help="write every figure as JSON")
    args = ap.parse_args()
    results = []
    for run in args.runs:
        results.append(one_run(Path(run), args.draws))
        print("\n".join(report(results[-1])), flush=True)
    if args.out:
        write_json(args.out, json.loads(json.dumps(results, default=str)))


if __name__ == "__main__":
    main()
