"""SPG Studio beside the official SPG code (riips/SPG), stage by stage, on the same scaled-down work.

Work: a tiny random-weight DINOv2 (2 blocks, D = 32, saved with DINOv2-large's image processor
config), S = 112, the first 36 MVTec AD bottle test images of ../shared/realdata (12 good, 24
anomalous with masks), SAE width 256 / k 16, 5 SAE epochs, 3 guide epochs; both codes train and
evaluate on that one set (a speed test, not an accuracy test).

Stages, each a fresh process of each code (start-up included, as a user pays it):
    official  run.py mode=train_sae (feature cache = extraction, then SAE), mode=train (guides),
              mode=eval (maps, metrics, save_maps)
    studio    spg extract, spg train-sae (store re-used), spg train-guides, spg eval
Then the official checkpoints are imported (`spg import-official`) and evaluated with
`spg eval --save-maps`: the largest difference between the official saved maps and ours, and
between the two metric tables, says whether the evaluation computes the same thing.

The official code is not part of this repository. Get it and its environment with:
    git -C "$(fetch github:riips/SPG)" archive 864fca7 | tar -x -C OFFICIAL_DIR
    python -m venv --system-site-packages VENV
    VENV/bin/pip install transformers==4.56.1 hydra-core==1.3.2 omegaconf==2.3.0 \
        matplotlib==3.10.3 tabulate==0.9.0 scikit-image
(the rest of its pinned requirements.txt is taken from the system site-packages: torch 2.9,
not 2.8; numpy, scipy, pandas, scikit-learn newer than pinned). Then:
    python benchmarks/official_bench.py --official OFFICIAL_DIR --python VENV/bin/python --work DIR
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# shared/realdata beside the checkout, or $SPG_REALDATA (as tests/test_data.py)
REALDATA = Path(os.environ.get("SPG_REALDATA") or ROOT.parent / "shared" / "realdata") / "mvtec_ad" / "bottle"
HUB_ID = "facebook/dinov2-large"  # the official code only accepts its known model ids
SPECIES = (("good", 12), ("broken_large", 8), ("broken_small", 8), ("contamination", 8))


def make_dataset(work: Path) -> Path:
    """The images as an official-layout dataset (symlinks + meta.json); returns DATASET_ROOT."""
    root = work / "datasets" / "mvtec_anomaly_detection"
    records = []
    for specie, count in SPECIES:
        for path in sorted((REALDATA / "test" / specie).iterdir())[:count]:
            rel = Path("bottle") / "test" / specie / path.name
            mask = Path("bottle") / "ground_truth" / specie / f"{path.stem}_mask.png"
            for link, target in ((rel, path), (mask, REALDATA / "ground_truth" / specie / mask.name)):
                if specie == "good" and link == mask:
                    continue
                (root / link).parent.mkdir(parents=True, exist_ok=True)
                if not (root / link).exists():
                    os.symlink(target, root / link)
            records.append(
                dict(
                    local_id=len(records),
                    img_path=str(rel),
                    mask_path="" if specie == "good" else str(mask),
                    cls_name="bottle",
                    specie_name=specie,
                    anomaly=int(specie != "good"),
                )
            )
    (root / "meta.json").write_text(json.dumps({"train": {"bottle": records}, "test": {"bottle": records}}))
    return root.parent


def make_model(work: Path) -> tuple[Path, Path]:
    """A tiny random DINOv2 with DINOv2-large's processor config, as a weights directory and as
    the hub id's snapshot in an HF cache (HF_HOME). Returns (weights dir, HF_HOME)."""
    import torch  # noqa: PLC0415 -- heavy: only the model-making step needs them
    import transformers  # noqa: PLC0415 -- heavy: only the model-making step needs them

    weights = work / "dinov2-tiny"
    if not (weights / "model.safetensors").exists():
        cfg = transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=70
        )
        torch.manual_seed(0)
        transformers.Dinov2Model(cfg).save_pretrained(weights)
        processor = {
            "image_processor_type": "BitImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": 256},
            "resample": 3,
            "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "do_convert_rgb": True,
        }
        (weights / "preprocessor_config.json").write_text(json.dumps(processor))
    hf_home = work / "hf"
    repo = hf_home / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text("0" * 40)
    for f in weights.iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    return weights, hf_home


def timed(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    """Run `cmd`, its output into `log`; wall seconds. A failure stops the benchmark, naming the log."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}; see {log}")
    return time.perf_counter() - t0


def official_stages(args: argparse.Namespace, data_root: Path, hf_home: Path) -> tuple[dict[str, float], Path, Path]:
    """The official code's three commands, timed; returns (times, SAE run folder, guide run folder)."""
    official = Path(args.official).resolve()
    env = dict(
        os.environ,
        REPO_ROOT=str(official),
        DATASET_ROOT=str(data_root),
        CACHE_DIR=str(args.work / "official_cache"),
        HF_HOME=str(hf_home),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(official / "src"),
    )
    common = [
        "model=facebook_dinov2-large",
        "data=single_dataset/mvtec",
        f"model.image_size={args.size}",
        "model.features_list=[2]",
    ]
    sae = ["name=layer_2", f"hidden_dim={args.width}", f"sparsifier_params.topk={args.k}", "use_cls=false"]
    logs = args.work / "logs"
    before = set((official / "outputs").glob("*/*")) if (official / "outputs").exists() else set()
    times = {}
    py = [args.python, "run.py"]
    times["extraction + SAE"] = timed(
        [*py, "mode=train_sae", *common, f"train.epoch={args.sae_epochs}", f"save_freq={args.sae_epochs}"]
        + [f"sae.0.{s}" for s in sae],
        official,
        env,
        logs / "official_sae.log",
    )
    (sae_run,) = set((official / "outputs").glob("*/*")) - before
    stamp = f"{sae_run.parent.name}/{sae_run.name.split('_')[0]}"
    times["guides"] = timed(
        [*py, "mode=train", "experiment=guide_sae", *common, f"train.epoch={args.guide_epochs}"]
        + [f"save_freq={args.guide_epochs}", "train.learning_rate=0.01", "train.ema.warmup_steps=0"]
        + [f"model.method_config.sae.0.{s}" for s in sae]
        + [
            f"model.method_config.guide_sae.datetime={stamp}",
            f"model.method_config.guide_sae.checkpoint_epoch={args.sae_epochs}",
        ]
        + ["model.method_config.guide_sae.model_name=facebook_dinov2-large"],
        official,
        env,
        logs / "official_guides.log",
    )
    (guide_run,) = set((official / "outputs").glob("*/*")) - before - {sae_run}
    times["evaluation"] = timed(
        [*py, "mode=eval", "data@test_data=single_dataset/mvtec", f"train_dir={guide_run}"]
        + [f"evaluate.epoch={args.guide_epochs}", "evaluate.use_ema=true", "evaluate.image_score.mode=map"]
        + ["evaluate.image_score.map_pool=max", "evaluate.pro_use_fast=true", "evaluate.save_maps=true"],
        official,
        env,
        logs / "official_eval.log",
    )
    return times, sae_run, guide_run


def studio_stages(args: argparse.Namespace, data_root: Path, weights: Path) -> tuple[dict[str, float], Path]:
    """The same work through `spg`, stage by stage; returns (times, run folder)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    spg = [sys.executable, "-m", "spg_core.cli"]
    dataset = f"mvtec:{data_root / 'mvtec_anomaly_detection'}"
    cache = ["--cache-dir", str(args.work / "studio_cache"), "--device", "cpu", "--quiet"]
    backbone = ["--backbone", "dinov2-large", "--weights", str(weights), "--image-size", str(args.size)]
    run = args.work / "studio_run"
    logs = args.work / "logs"
    times = {}
    times["extraction"] = timed(
        [*spg, "extract", "--dataset", dataset, *backbone, "--protocol", "official", *cache],
        ROOT,
        env,
        logs / "s_x.log",
    )
    times["SAE"] = timed(
        [*spg, "train-sae", "--aux", dataset, "--out", str(run), *backbone, "--protocol", "official"]
        + ["--width", str(args.width), "--k", str(args.k), "--sae-epochs", str(args.sae_epochs), *cache],
        ROOT,
        env,
        logs / "s_sae.log",
    )
    times["guides"] = timed(
        [*spg, "train-guides", "--run", str(run), "--guide-epochs", str(args.guide_epochs), *cache],
        ROOT,
        env,
        logs / "s_guides.log",
    )
    times["evaluation"] = timed(
        [*spg, "eval", "--run", str(run), "--target", dataset, *cache], ROOT, env, logs / "s_eval.log"
    )
    return times, run


def same_evaluation(args: argparse.Namespace, data_root: Path, weights: Path, sae_run: Path, guide_run: Path) -> dict:
    """Import the official checkpoints, evaluate them here, compare maps and metrics with theirs."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    spg = [sys.executable, "-m", "spg_core.cli"]
    out, maps = args.work / "imported_run", args.work / "imported_maps"
    dataset = f"mvtec:{data_root / 'mvtec_anomaly_detection'}"
    cache = ["--cache-dir", str(args.work / "studio_cache"), "--device", "cpu"]
    timed(
        [*spg, "import-official", "--sae-checkpoint", str(sae_run / "checkpoints" / f"epoch_{args.sae_epochs}.pth")]
        + ["--guide-checkpoint", str(guide_run / "checkpoints" / f"epoch_{args.guide_epochs}.pth")]
        + ["--dead-mask", str(sae_run / "checkpoints" / "dead_atom_mask_layer_2.pt")]
        + ["--backbone", "dinov2-large", "--weights", str(weights), "--out", str(out), "--device", "cpu"],
        ROOT,
        env,
        args.work / "logs" / "import.log",
    )
    timed(
        [*spg, "eval", "--run", str(out), "--target", dataset, "--save-maps", str(maps), "--quiet", *cache],
        ROOT,
        env,
        args.work / "logs" / "import_eval.log",
    )
    theirs = {}
    for f in (guide_run / "artifacts" / "mvtec" / f"epoch_{args.guide_epochs}" / "maps").glob("*.npz"):
        with np.load(f) as z:
            theirs[str(z["image_path"])] = z["anomaly_map"].squeeze()
    worst, n = 0.0, 0
    for f in maps.glob("*.npz"):
        with np.load(f) as z:
            rel = str(Path(str(z["image_path"])).relative_to(data_root / "mvtec_anomaly_detection"))
            worst, n = max(worst, float(np.abs(z["anomaly_map"] - theirs[rel]).max())), n + 1
    ours = json.loads((out / "metrics.json").read_text())
    table = next((guide_run / "metrics").glob("metrics_mvtec_*_ema.csv"))
    with open(table) as fh:
        row = next(r for r in csv.DictReader(fh) if r.get("class", "").strip() == "bottle")
    return {"maps_compared": n, "max_map_difference": worst, "official_metrics": row, "studio_metrics": ours}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help="an unpacked riips/SPG checkout (see the module docstring)")
    p.add_argument("--python", required=True, help="the python of the official code's virtual environment")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (data links, caches, runs, logs)")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--sae-epochs", type=int, default=5)
    p.add_argument("--guide-epochs", type=int, default=3)
    args = p.parse_args()
    args.work = args.work.resolve()
    (args.work / "logs").mkdir(parents=True, exist_ok=True)
    data_root = make_dataset(args.work)
    weights, hf_home = make_model(args.work)
    official, sae_run, guide_run = official_stages(args, data_root, hf_home)
    studio, _ = studio_stages(args, data_root, weights)
    check = same_evaluation(args, data_root, weights, sae_run, guide_run)
    o_total, s_total = sum(official.values()), sum(studio.values())
    print(
        f"{datetime.date.today()}  {sum(c for _, c in SPECIES)} images, S {args.size}, "
        f"M {args.width}, k {args.k}, {args.sae_epochs} SAE / {args.guide_epochs} guide epochs; wall seconds"
    )
    print("official: " + ", ".join(f"{k} {v:.1f}" for k, v in official.items()) + f"; total {o_total:.1f}")
    print("studio:   " + ", ".join(f"{k} {v:.1f}" for k, v in studio.items()) + f"; total {s_total:.1f}")
    print(f"end to end: studio {o_total / s_total:.2f}x faster")
    print(json.dumps(check, indent=1, default=str))


if __name__ == "__main__":
    main()
