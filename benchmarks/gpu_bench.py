"""GPU (and CPU) throughput of every SPG stage, and the projected time of a full two-direction run.

    python benchmarks/gpu_bench.py                    # CUDA when present: full-size DINOv3 ViT-L/16 at 448
    python benchmarks/gpu_bench.py --device cpu --small   # anywhere: tiny model, small token counts

Prints, each with device, dtype and batch size:
  forward images/s (eager and torch.compile), extraction images/s end to end and its ratio to the forward;
  SAE training tokens/s (bf16 vs fp32, dense vs sparse decode) and FVU of each;
  guide training time; per-image inference latency at batch 1 and throughput at batch 64;
  the projected time of extract(MVTec AD + VisA) + 2 SAEs x 50 epochs + 2 guide pairs + 2 evaluations.
Random weights and random tokens: the FLOPs are those of the real model and data sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spg_core.backbones import load_backbone
from spg_core.config import GuideConfig, SAEConfig
from spg_core.data import Dataset, Sample
from spg_core.guides import train_guides
from spg_core.inference import Scorer
from spg_core.sae_train import train_sae
from spg_core.store import build_store

# Dataset sizes of the paper's protocol (test splits: auxiliary and target sets).
MVTEC_TEST, VISA_TEST = 1725, 2162
MVTEC_ORIG, VISA_ORIG = (900, 900), (1500, 1000)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 3) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench_forward(bb, batch: int, device: torch.device, compile_: bool) -> float:
    x = torch.rand(batch, 3, bb.image_size, bb.image_size, device=device)
    model = bb
    if compile_:
        model = torch.compile(bb)

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(x)

    return batch / timed(run, device)


def make_image_folder(root: Path, n: int, size: tuple[int, int]) -> Dataset:
    """n random JPEGs of the dataset's original size (decode + resize cost is real)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for i in range(n):
        path = root / f"{i:05d}.jpg"
        Image.fromarray(np.roll(base, i * 7, axis=1)).save(path, quality=90)
        samples.append(Sample(str(path), None, 0, "bench", "good", "test"))
    return Dataset(name=f"bench:{root}", root=str(root), samples=samples)


def bench_extraction(bb, n_images: int, batch: int, workers: int, device: torch.device, tmp: Path) -> float:
    ds = make_image_folder(tmp / "images", n_images, MVTEC_ORIG)
    t0 = time.perf_counter()
    build_store(ds, bb, cache_dir=tmp / "cache", batch_size=batch, num_workers=workers, progress=False)
    sync(device)
    return n_images / (time.perf_counter() - t0)


def bench_sae(
    n_tokens: int,
    dim: int,
    cfg: SAEConfig,
    device: torch.device,
    bf16: bool,
    tokens_per_image: int,
    sparse_decode: bool = False,
    compile_: bool | str = False,
) -> tuple[float, float]:
    """Tokens/s (median epoch after the first) and final FVU of SAE training on synthetic tokens."""
    gen = torch.Generator(device=device).manual_seed(0)
    # Sparse mixtures of 512 directions + noise: an SAE can explain them, so FVU means something.
    basis = torch.randn(512, dim, generator=gen, device=device)
    chunks = []
    for start in range(0, n_tokens, 1_000_000):
        n = min(1_000_000, n_tokens - start)
        coef = torch.relu(torch.randn(n, 512, generator=gen, device=device) - 1.5)
        chunks.append((coef @ basis / 4 + 0.05 * torch.randn(n, dim, generator=gen, device=device)).half())
    tokens = torch.cat(chunks)
    del chunks
    _sae, history = train_sae(
        tokens,
        cfg,
        tokens_per_image=tokens_per_image,
        device=device,
        progress=False,
        bf16=bf16,
        sparse_decode=sparse_decode,
        compile=compile_,
    )
    epochs = [h["tokens_per_s"] for h in history if h["epoch"] != "final"]
    return float(np.median(epochs[1:] or epochs)), history[-1]["fvu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="tiny model and token counts (CPU check)")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--extract-images", type=int, default=None)
    ap.add_argument("--sae-tokens", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    device = torch.device(args.device)
    small = args.small or device.type == "cpu"
    name = args.backbone or ("dinov3-vitl16-tiny" if small else "dinov3-vitl16-random")
    batch = args.batch or (8 if small else 64)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    out: dict[str, object] = {"device": dev_name, "torch": torch.__version__, "backbone": name}
    print(f"device {dev_name} | torch {torch.__version__} | backbone {name}")

    bb = load_backbone(name, device=device)
    n_patch, dim = bb.num_patches, bb.dim
    fwd = bench_forward(bb, batch, device, compile_=False)
    print(f"forward eager     {fwd:8.1f} img/s   ({dtype}, batch {batch}, {bb.image_size}px)")
    out["forward_eager_img_s"] = fwd
    if device.type == "cuda":
        try:
            fwd_c = bench_forward(bb, batch, device, compile_=True)
            print(f"forward compiled  {fwd_c:8.1f} img/s   ({dtype}, batch {batch})")
            out["forward_compiled_img_s"] = fwd_c
        except Exception as exc:  # compile support differs across installs: report, don't die
            print(f"forward compiled  unavailable ({type(exc).__name__}: {str(exc)[:120]})")

    n_extract = args.extract_images or (32 if small else 1024)
    workers = min(16, os.cpu_count() or 1) if device.type == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        ext = bench_extraction(bb, n_extract, batch, workers, device, Path(tmp) / "eager")
    print(
        f"extraction eager  {ext:8.1f} img/s   end to end ({n_extract} JPEGs 900x900, {workers} workers), "
        f"ratio to eager forward {ext / fwd:.2f}"
    )
    out.update(extraction_img_s=ext, extraction_ratio=ext / fwd)
    if "forward_compiled_img_s" in out:
        bb_c = load_backbone(name, device=device).enable_compile()
        bench_forward(bb_c, batch, device, compile_=False)  # compile outside the timed run
        with tempfile.TemporaryDirectory() as tmp:
            ext_c = bench_extraction(bb_c, n_extract, batch, workers, device, Path(tmp) / "compiled")
        ratio = ext_c / float(out["forward_compiled_img_s"])
        print(f"extraction compiled {ext_c:6.1f} img/s   end to end, ratio to compiled forward {ratio:.2f}")
        out.update(extraction_compiled_img_s=ext_c, extraction_compiled_ratio=ratio)
        ext = max(ext, ext_c)

    n_tok = args.sae_tokens or (20_000 if small else 8_500_000)
    cfg = SAEConfig(width=4096 if not small else 512, k=64 if not small else 16, epochs=3)
    # (bf16, sparse decode, torch.compile, images per batch); the paper's batch is 16 images.
    variants = (
        [
            (False, False, False, 16),
            (True, False, False, 16),
            (True, True, False, 16),
            (True, False, True, 16),
            (True, False, "reduce-overhead", 16),
            (True, False, True, 64),
        ]
        if device.type == "cuda"
        else [(False, False, False, 16), (False, True, False, 16)]
    )
    for bf16, sparse, comp, b_img in variants:
        tps, fvu = bench_sae(n_tok, dim, replace(cfg, batch_images=b_img), device, bf16, n_patch, sparse, comp)
        label = (
            ("bf16" if bf16 else "fp32")
            + ("_sparse" if sparse else "")
            + ({True: "_compiled", "reduce-overhead": "_cudagraphs"}.get(comp, ""))
            + ("" if b_img == 16 else f"_batch{b_img}")
        )
        print(
            f"SAE train {label:<24} {tps / 1e6:7.3f} M tok/s (D {dim}, M {cfg.width}, k {cfg.k}, batch "
            f"{b_img} img = {b_img * n_patch} tok, {n_tok} tokens), FVU {fvu:.4f}"
        )
        out[f"sae_{label}_tok_s"] = tps
        out[f"sae_{label}_fvu"] = fvu
    # The projection uses the paper's batch (16 images): the fastest 16-image variant.
    sae_tps = max(v for k, v in out.items() if k.startswith("sae_") and k.endswith("_tok_s") and "batch" not in k)
    visa_tokens = VISA_TEST * n_patch
    mvtec_tokens = MVTEC_TEST * n_patch
    sae_50 = 50 * (visa_tokens + mvtec_tokens) / float(sae_tps)
    print(
        f"SAE 50 epochs     {50 * visa_tokens / float(sae_tps):8.1f} s at VisA scale ({visa_tokens / 1e6:.1f} M tokens)"
    )

    # Guides: the paper's batch of 16 images; random tokens and masks of the real shapes.
    n_img = 64 if small else 512
    tokens = torch.randn(n_img, n_patch, dim, device=device)
    masks = (torch.rand(n_img, bb.image_size, bb.image_size, device=device) > 0.97).float()
    dictionary = torch.nn.functional.normalize(torch.randn(dim, cfg.width, device=device), dim=0)
    gcfg = GuideConfig(epochs=2)
    t0 = time.perf_counter()
    train_guides(
        dictionary,
        lambda idx: (tokens[idx.to(device)], masks[idx.to(device)]),
        n_img,
        bb.grid,
        gcfg,
        device=device,
        progress=False,
    )
    sync(device)
    guide_s_per_img_epoch = (time.perf_counter() - t0) / (n_img * gcfg.epochs)
    print(f"guide training    {1 / guide_s_per_img_epoch:8.1f} img/s per epoch (batch 16)")
    out["guide_img_s"] = 1 / guide_s_per_img_epoch

    scorer = Scorer(torch.randn(2, dim, device=device), 0.07, bb.grid, bb.image_size)
    x1 = torch.rand(1, 3, bb.image_size, bb.image_size, device=device)
    lat = timed(lambda: scorer(bb.extract(x1)), device, repeat=10)
    xb = torch.rand(batch, 3, bb.image_size, bb.image_size, device=device)
    thr = batch / timed(lambda: scorer(bb.extract(xb)), device)
    print(f"inference         {1000 * lat:8.1f} ms/img at batch 1, {thr:.1f} img/s at batch {batch}")
    out.update(latency_ms_b1=1000 * lat, inference_img_s=thr)

    # Full two-direction run: extract both test sets once, two SAEs (50 epochs each on its aux set),
    # two guide pairs (GuideConfig().epochs each), score both targets.
    n_all = MVTEC_TEST + VISA_TEST
    extract_s = n_all / ext
    guides_s = GuideConfig().epochs * n_all * guide_s_per_img_epoch
    eval_s = n_all / thr
    total = extract_s + sae_50 + guides_s + eval_s
    print(
        f"projected full two-direction run: {total:.0f} s = extract {extract_s:.0f} + SAE {sae_50:.0f} + "
        f"guides {guides_s:.0f} + inference {eval_s:.0f} (metrics excluded; see metrics_bench.py)"
    )
    out.update(
        projected_total_s=total,
        projected_extract_s=extract_s,
        projected_sae_s=sae_50,
        projected_guides_s=guides_s,
        projected_eval_s=eval_s,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    sys.exit(main())
