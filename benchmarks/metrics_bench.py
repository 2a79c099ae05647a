"""Benchmark spg_core.metrics against the straightforward implementations.

Default: a synthetic set the size of the MVTec AD test split at 448 x 448
(1725 images, ~346 M pixels, 15 categories), float16 maps with smooth blobs (and the same maps in float32)
where the masks are. Scale down with --images / --size.

Each measurement runs in its own subprocess that loads the saved data first,
so "peak extra RSS" is the process's peak resident memory (ru_maxrss) minus
its resident memory right after loading: what the metric itself needed.

The straightforward baselines are far too slow for the full set, so they run
on a subset (--subset-pixels, default 50 M pixels) and are extrapolated
linearly in pixels (and, for the threshold loop, in the number of
thresholds). Linear extrapolation favours the sort-based baselines, whose
cost grows as n log n.

    python benchmarks/metrics_bench.py                       # full size
    python benchmarks/metrics_bench.py --images 200 --size 256
    python benchmarks/metrics_bench.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.metrics import auc, roc_auc_score

from spg_core import metrics
from spg_core.memory import peak_resident_bytes, reset_peak_resident
from spg_core.metrics.aupro import _area_up_to

MVTEC_CATEGORIES = 15
ANOMALOUS_FRACTION = 1258 / 1725  # MVTec AD test split


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------


def _blob_batch(n: int, size: int, gen: torch.Generator, anomalous: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (float32 [n, S, S] in [0, 1]) and masks (bool) for n images.

    Background: smooth low-frequency noise. Anomalous images get 1-3 elliptic
    defects; the map rises smoothly over each (a Gaussian bump, imperfect so
    that the metrics are not trivial) and the mask is the ellipse.
    """
    low = torch.rand(n, 1, 14, 14, generator=gen)
    bg = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    maps = 0.15 + 0.35 * bg + 0.05 * torch.rand(n, size, size, generator=gen)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = coords.view(-1, 1), coords.view(1, -1)
    for i in torch.nonzero(anomalous).flatten().tolist():
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            cy, cx = (torch.rand(2, generator=gen) * size).tolist()
            ry, rx = (size * (0.01 + 0.08 * torch.rand(2, generator=gen))).tolist()
            r2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
            masks[i] |= r2 <= 1.0
            strength = 0.1 + 0.5 * float(torch.rand(1, generator=gen))
            maps[i] += strength * torch.exp(-0.7 * r2)
    return maps.clamp_(0.0, 1.0), masks


def generate(images: int, size: int, categories: int, seed: int, out: Path) -> None:
    """Write maps.npy (float16), maps32.npy (the same maps before rounding to float16: genuine
    float32 values, as a run's maps are), masks.npy (bool), scores.npy, labels.npy, cats.npy."""
    gen = torch.Generator().manual_seed(seed)
    maps = np.lib.format.open_memmap(out / "maps.npy", mode="w+", dtype=np.float16, shape=(images, size, size))
    maps32 = np.lib.format.open_memmap(out / "maps32.npy", mode="w+", dtype=np.float32, shape=(images, size, size))
    masks = np.lib.format.open_memmap(out / "masks.npy", mode="w+", dtype=bool, shape=(images, size, size))
    labels = torch.rand(images, generator=gen) < ANOMALOUS_FRACTION
    batch = max(1, (1 << 22) // (size * size))
    for s in range(0, images, batch):
        e = min(images, s + batch)
        m, k = _blob_batch(e - s, size, gen, labels[s:e])
        maps[s:e] = m.numpy().astype(np.float16)
        maps32[s:e] = m.numpy()
        masks[s:e] = k.numpy()
    maps.flush()
    maps32.flush()
    masks.flush()
    labels_np = masks.reshape(images, -1).any(axis=1)  # a defect may miss: relabel
    scores = maps.reshape(images, -1).max(axis=1).astype(np.float64)
    scores += np.random.default_rng(seed).normal(0, 0.05, images)
    cats = np.array([f"cat{i * categories // images:02d}" for i in range(images)])
    np.save(out / "labels.npy", labels_np)
    np.save(out / "scores.npy", scores)
    np.save(out / "cats.npy", cats)
    del maps, maps32, masks


# --------------------------------------------------------------------------
# straightforward baselines (what evaluation scripts usually do)
# --------------------------------------------------------------------------


def sklearn_pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def mvtec_reference_aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """The MVTec AD reference algorithm, rewritten: per-pixel FPR/PRO increments,
    argsort of all pixels, cumulative sums, last point of each distinct value."""
    fp_inc = np.zeros(maps.shape, dtype=np.uint32)
    pro_inc = np.zeros(maps.shape, dtype=np.float64)
    n_regions = 0
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        n_regions += n
        fp_inc[i] = lab == 0
        sizes = np.bincount(lab.ravel())
        inv = np.zeros(n + 1)
        inv[1:] = 1.0 / sizes[1:]
        pro_inc[i] = inv[lab]
    order = np.argsort(maps.ravel(), kind="stable")[::-1]
    vals = maps.ravel()[order]
    fpr = np.cumsum(fp_inc.ravel()[order]) / float(fp_inc.sum())
    pro = np.cumsum(pro_inc.ravel()[order]) / n_regions
    keep = np.append(vals[1:] != vals[:-1], True)
    x = np.concatenate(([0.0], np.minimum(fpr[keep], 1), [1.0]))
    y = np.concatenate(([0.0], np.minimum(pro[keep], 1), [1.0]))
    return _area_up_to(x, y, max_fpr) / max_fpr


def loop_aupro(maps: np.ndarray, masks: np.ndarray, thresholds: int | None = None, max_fpr: float = 0.3) -> float:
    """The official SPG (AnomalyCLIP) loop: binarise at each of 200 grid thresholds, FPR over
    normal pixels, PRO = mean over regions (labelled once) of their coverage.
    With ``thresholds`` < 200 only the first ones are run (timing only)."""
    regions = []
    for i in range(len(masks)):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        for c in range(1, n + 1):
            rows, cols = np.nonzero(lab == c)
            regions.append((i, rows, cols))
    inverse = ~masks
    n_inverse = inverse.sum()
    lo, hi = float(maps.min()), float(maps.max())
    grid = np.arange(lo, hi, (hi - lo) / metrics.OFFICIAL_STEPS)
    if thresholds is not None:
        grid = grid[:thresholds]
    fprs, pros = [], []
    for th in grid:
        binary = maps > th
        pros.append(np.mean([binary[i][r, c].sum() / r.size for i, r, c in regions]))
        fprs.append(np.logical_and(inverse, binary).sum() / n_inverse)
    fprs_a, pros_a = np.array(fprs), np.array(pros)
    keep = fprs_a < max_fpr
    if keep.sum() < 2:
        return math.nan
    f = fprs_a[keep]
    f = (f - f.min()) / (f.max() - f.min())
    return float(auc(f, pros_a[keep]))


# --------------------------------------------------------------------------
# worker: one measurement in a fresh process
# --------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _load(work: Path, images: int | None, dtype: str) -> dict[str, Any]:
    # "float32": genuine float32 maps; "float32-from-fp16": the float16 maps cast (few distinct values)
    maps = np.load(work / ("maps32.npy" if dtype == "float32" else "maps.npy"), mmap_mode="r")
    masks = np.load(work / "masks.npy", mmap_mode="r")
    n = len(maps) if images is None else images
    d = {
        "maps": np.array(maps[:n]),
        "masks": np.array(masks[:n]),
        "scores": np.load(work / "scores.npy")[:n],
        "labels": np.load(work / "labels.npy")[:n],
        "cats": np.load(work / "cats.npy")[:n],
    }
    if dtype == "float32-from-fp16":
        d["maps"] = d["maps"].astype(np.float32)
    return d


TASKS: dict[str, Callable[[dict[str, Any], argparse.Namespace], Any]] = {
    "ours_evaluate": lambda d, a: metrics.evaluate(
        d["scores"], d["labels"], d["maps"], d["masks"], d["cats"], device=a.device
    )["mean"],
    "ours_pixel_auroc": lambda d, a: metrics.pixel_auroc(d["maps"], d["masks"], device=a.device),
    "ours_aupro": lambda d, a: metrics.aupro(d["maps"], d["masks"], device=a.device),
    "ours_aupro_official": lambda d, a: metrics.aupro_official(d["maps"], d["masks"], device=a.device),
    "sklearn_pixel_auroc": lambda d, a: sklearn_pixel_auroc(d["maps"], d["masks"]),
    "mvtec_reference_aupro": lambda d, a: mvtec_reference_aupro(d["maps"], d["masks"]),
    "loop_aupro": lambda d, a: loop_aupro(d["maps"], d["masks"], a.loop_thresholds),
}


def worker(args: argparse.Namespace) -> None:
    data = _load(Path(args.workdir), args.worker_images, args.dtype)
    if args.device == "cuda":  # initialise CUDA outside the timed region
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
    hwm_reset = reset_peak_resident()
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    value = TASKS[args.worker](data, args)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    # VmHWM is the peak since the reset; without a reset fall back to ru_maxrss
    # (which may still hold the loading peak, so it can only over-state).
    peak = peak_resident_bytes() // 1024 if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pixels = int(np.prod(data["maps"].shape))
    print(
        json.dumps(
            {
                "task": args.worker,
                "seconds": seconds,
                "pixels": pixels,
                "extra_rss_mib": max(0, peak - before) / 1024,
                "value": value,
            }
        )
    )


def run_task(
    task: str,
    args: argparse.Namespace,
    *,
    images: int | None = None,
    dtype: str = "float16",
    loop_thresholds: int | None = None,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        task,
        "--workdir",
        str(args.workdir),
        "--device",
        args.device,
        "--dtype",
        dtype,
    ]
    if images is not None:
        cmd += ["--worker-images", str(images)]
    if loop_thresholds is not None:
        cmd += ["--loop-thresholds", str(loop_thresholds)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{task} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------


def _row(name: str, seconds: float, mib: float | None, note: str = "") -> str:
    mem = f"{mib:9.0f}" if mib is not None else f"{'-':>9}"
    return f"  {name:<50} {seconds:9.2f} {mem}   {note}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1725)
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--categories", type=int, default=MVTEC_CATEGORIES)
    p.add_argument(
        "--subset-pixels", type=float, default=50e6, help="pixels the straightforward baselines are timed on"
    )
    p.add_argument(
        "--agree-pixels", type=float, default=5e6, help="pixels for the full 200-threshold loop agreement check"
    )
    p.add_argument(
        "--loop-thresholds",
        type=int,
        default=20,
        help="thresholds the loop baseline is timed with (then extrapolated to 200)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-float32", action="store_true", help="skip the float32 runs")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", choices=sorted(TASKS), help=argparse.SUPPRESS)
    p.add_argument("--worker-images", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float16", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    own_dir = args.workdir is None
    args.workdir = Path(tempfile.mkdtemp(prefix="spg_metrics_bench_")) if own_dir else args.workdir
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        report(args)
    finally:
        if own_dir:
            shutil.rmtree(args.workdir, ignore_errors=True)


def report(args: argparse.Namespace) -> None:
    n, s = args.images, args.size
    total_px = n * s * s
    sub_n = max(1, min(n, math.ceil(args.subset_pixels / (s * s))))
    agree_n = max(1, min(n, math.ceil(args.agree_pixels / (s * s))))
    sub_px = sub_n * s * s
    cpu = os.cpu_count()
    print(
        f"spg_core.metrics benchmark: {n} images x {s} x {s} = {total_px / 1e6:.1f} M pixels, "
        f"{args.categories} categories, float16 maps"
    )
    print(
        f"machine: {cpu} CPU cores visible, device={args.device}"
        + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else "")
    )
    t0 = time.perf_counter()
    generate(n, s, args.categories, args.seed, args.workdir)
    print(
        f"generated synthetic data in {time.perf_counter() - t0:.1f} s "
        f"({np.load(args.workdir / 'masks.npy', mmap_mode='r').mean() * 100:.2f}% anomalous pixels)\n"
    )

    print(f"  {'measurement':<50} {'seconds':>9} {'extra MiB':>9}   note")
    full: dict[str, dict[str, Any]] = {}
    for task in ("ours_evaluate", "ours_pixel_auroc", "ours_aupro", "ours_aupro_official"):
        r = full[task] = run_task(task, args)
        print(
            _row(
                f"{task} (full set, fp16)",
                r["seconds"],
                r["extra_rss_mib"],
                f"{r['seconds'] / total_px * 1e9:.2f} ns/pixel",
            )
        )
    if not args.no_float32:
        for task, dtype, suffix in (
            ("ours_evaluate", "float32", "_f32"),
            ("ours_pixel_auroc", "float32", "_f32"),
            ("ours_aupro", "float32", "_f32"),
            ("ours_pixel_auroc", "float32-from-fp16", "_f32h"),
            ("ours_aupro", "float32-from-fp16", "_f32h"),
        ):
            r = full[task + suffix] = run_task(task, args, dtype=dtype)
            print(
                _row(
                    f"{task} (full set, {dtype})",
                    r["seconds"],
                    r["extra_rss_mib"],
                    f"{r['seconds'] / total_px * 1e9:.2f} ns/pixel",
                )
            )

    print(
        f"\n  subset: first {sub_n} images = {sub_px / 1e6:.1f} M pixels "
        f"(extrapolated x{total_px / sub_px:.2f} linearly to the full set)"
    )
    sub = {
        t: run_task(t, args, images=sub_n)
        for t in ("ours_pixel_auroc", "ours_aupro", "sklearn_pixel_auroc", "mvtec_reference_aupro")
    }
    sub["loop_aupro"] = run_task("loop_aupro", args, images=sub_n, loop_thresholds=args.loop_thresholds)
    scale = total_px / sub_px
    for task, r in sub.items():
        extra = scale * (metrics.OFFICIAL_STEPS / args.loop_thresholds if task == "loop_aupro" else 1)
        note = f"-> {r['seconds'] * extra:8.1f} s extrapolated to the full set"
        if task == "loop_aupro":
            note += f" (timed with {args.loop_thresholds} of 200 thresholds)"
        print(_row(f"{task} (subset)", r["seconds"], r["extra_rss_mib"], note))

    est_sk = sub["sklearn_pixel_auroc"]["seconds"] * scale
    est_ref = sub["mvtec_reference_aupro"]["seconds"] * scale
    est_loop = sub["loop_aupro"]["seconds"] * scale * metrics.OFFICIAL_STEPS / args.loop_thresholds
    print("\n  speed-up on the full set (ours measured, baselines extrapolated):")
    print(
        f"    pixel AUROC    : sklearn {est_sk:8.1f} s / ours {full['ours_pixel_auroc']['seconds']:.2f} s"
        f" = {est_sk / full['ours_pixel_auroc']['seconds']:6.0f}x"
    )
    print(
        f"    AUPRO (exact)  : MVTec-reference sort {est_ref:8.1f} s / ours "
        f"{full['ours_aupro']['seconds']:.2f} s = {est_ref / full['ours_aupro']['seconds']:6.0f}x"
    )
    print(
        f"    AUPRO (200 th) : threshold loop {est_loop:8.1f} s / ours official "
        f"{full['ours_aupro_official']['seconds']:.2f} s = "
        f"{est_loop / full['ours_aupro_official']['seconds']:6.0f}x"
    )
    all_four = est_sk + est_ref
    print(
        f"    all pixel metrics per category (evaluate) {full['ours_evaluate']['seconds']:.2f} s "
        f"vs sklearn + MVTec-reference {all_four:.1f} s = "
        f"{all_four / full['ours_evaluate']['seconds']:.0f}x"
    )
    for suffix, name in (("_f32", "float32 maps"), ("_f32h", "float32 maps of float16 values")):
        if "ours_pixel_auroc" + suffix in full:
            print(
                f"    {name}: pixel AUROC {est_sk / full['ours_pixel_auroc' + suffix]['seconds']:.0f}x, "
                f"AUPRO {est_ref / full['ours_aupro' + suffix]['seconds']:.0f}x "
                "(baselines timed on the float16 maps)"
            )

    print(f"\n  agreement on the subset ({sub_px / 1e6:.1f} M pixels):")
    d_auc = abs(sub["ours_pixel_auroc"]["value"] - sub["sklearn_pixel_auroc"]["value"])
    d_pro = abs(sub["ours_aupro"]["value"] - sub["mvtec_reference_aupro"]["value"])
    print(
        f"    pixel AUROC  ours {sub['ours_pixel_auroc']['value']:.9f}  sklearn "
        f"{sub['sklearn_pixel_auroc']['value']:.9f}  |diff| {d_auc:.2e}"
    )
    print(
        f"    AUPRO mvtec  ours {sub['ours_aupro']['value']:.9f}  reference "
        f"{sub['mvtec_reference_aupro']['value']:.9f}  |diff| {d_pro:.2e}"
    )
    ours_ac = run_task("ours_aupro_official", args, images=agree_n)
    loop_ac = run_task("loop_aupro", args, images=agree_n, loop_thresholds=metrics.OFFICIAL_STEPS)
    print(
        f"    AUPRO official on {agree_n * s * s / 1e6:.1f} M pixels (all 200 thresholds): ours "
        f"{ours_ac['value']:.9f}  loop {loop_ac['value']:.9f}  "
        f"|diff| {abs(ours_ac['value'] - loop_ac['value']):.2e}  "
        f"(loop {loop_ac['seconds']:.1f} s, ours {ours_ac['seconds']:.2f} s)"
    )
    print(
        "\n  mean over categories (ours): "
        + ", ".join(f"{k} {v:.4f}" for k, v in full["ours_evaluate"]["value"].items())
    )


if __name__ == "__main__":
    main()
