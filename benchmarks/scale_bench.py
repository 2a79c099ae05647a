"""SAE training throughput on 1 and N processes (torch.distributed), data-parallel and latent-sharded;
and SAE training streamed from a store larger than a host memory budget.

    python benchmarks/scale_bench.py                          # CPU, gloo, 1 and 2 processes
    python benchmarks/scale_bench.py --device cuda --nproc 1 2   # one GPU per process, NCCL
    python benchmarks/scale_bench.py --store-gb 6 --budget 1.5GiB --dim 1024 --width 512 --k 32 --threads 2

The store mode writes random fp16 tokens directly in the store format (docs/STORE.md) under
--workdir, trains one epoch streamed under --budget in a fresh process (peak resident memory by
VmHWM in that process, after a warm-up), and one epoch in memory on a smaller store.

Spawns each world with torch.multiprocessing (what torchrun does, without the launcher), trains
on random tokens `[T, D]` fp16 and prints global tokens/s (all ranks together, median of the
epochs after the first) for: data-parallel training (`sae_train.train_sae`) and latent-sharded
training (`sae_sharded.train_latent_sharded`, each rank M / N atoms), plus the streaming reader
(`token_stream.ShardStream`) over a store of the same tokens. Random tokens carry the real
FLOPs; the FVU is not a quality figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spg_core import distributed
from spg_core.config import SAEConfig
from spg_core.launch import free_port
from spg_core.memory import parse_size
from spg_core.sae_sharded import train_latent_sharded
from spg_core.sae_train import train_sae
from spg_core.store import TokenStore
from spg_core.store.random_store import write_random_store
from spg_core.token_stream import ShardStream


def _tokens(n: int, dim: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=gen).to(torch.float16)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(distributed.torchrun_env(rank, world, port))
    torch.set_num_threads(args.threads)
    if world > 1:
        distributed.init_from_env("nccl" if args.device == "cuda" else "gloo")
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)

    tokens = _tokens(args.tokens, args.dim)
    cfg = SAEConfig(width=args.width, k=args.k, epochs=args.epochs, batch_images=args.batch_images)
    results = {}
    _, history = train_sae(tokens, cfg, tokens_per_image=args.tokens_per_image, device=device, progress=False)
    results["data_parallel"] = [h["tokens_per_s"] for h in history if isinstance(h["epoch"], int)]
    results["fvu"] = history[-1]["fvu"]
    if world > 1 or args.sharded_single:
        _, history = train_latent_sharded(tokens, cfg, tokens_per_image=args.tokens_per_image, device=device)
        results["latent_sharded"] = [h["tokens_per_s"] for h in history]
    if distributed.is_main():
        Path(out).write_text(json.dumps(results))
    distributed.destroy()


def _run_world(world: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.start_processes(_worker, args=(world, free_port(), args, out), nprocs=world, start_method="spawn")
        return json.loads(Path(out).read_text())


def _stream_rate(args: argparse.Namespace) -> float:
    """Tokens/s the prefetching reader delivers from a store of `args.tokens` tokens (one process)."""
    side = int(args.tokens_per_image**0.5)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_random_store(
            Path(tmp) / "s", images=args.tokens // (side * side), grid=(side, side), dim=args.dim, shard_images=64
        )
        stream = ShardStream(
            TokenStore(root), args.batch_images * side * side, device="cuda" if args.device == "cuda" else "cpu"
        )
        t0 = time.perf_counter()
        n = sum(len(b) for b in stream.epoch(0))
        return n / (time.perf_counter() - t0)


# -- a store larger than the memory budget --------------------------------------------------------------

_TRAIN_CHILD = """
import json, sys, time, torch
from spg_core.memory import peak_resident_bytes
from spg_core.config import SAEConfig
from spg_core.pipeline import fit_dictionary
from spg_core.sae_train import train_sae
from spg_core.store import TokenStore
root, budget, stream, width, k, batch_images, threads = sys.argv[1:]
torch.set_num_threads(int(threads))
store = TokenStore(root)
cfg = SAEConfig(width=int(width), k=int(k), epochs=1, batch_images=int(batch_images))
n = 2 * cfg.batch_images * store.num_patches  # warm-up: torch maps its kernels' code on first use
warm = torch.randn(n, store.dim)
train_sae(warm, cfg, tokens_per_image=store.num_patches, device=torch.device("cpu"), progress=False)
before = peak_resident_bytes()
t0 = time.perf_counter()
sae, info = fit_dictionary(store, cfg, "spg", torch.device("cpu"), False, max_host_memory=budget, stream=stream)
seconds = time.perf_counter() - t0
peak = peak_resident_bytes()
rate = info["history"][0]["tokens_per_s"]
print(json.dumps({"peak": peak, "before": before, "seconds": seconds, "tokens_per_s": rate, "feed": info["feed"]}))
"""


def _train_from_store(root: Path, budget: str, stream: str, args: argparse.Namespace) -> dict:
    """One SAE epoch over the store in a fresh process; its peak resident memory (VmHWM) and speed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-c", _TRAIN_CHILD, str(root), budget, stream]
    cmd += [str(args.width), str(args.k), str(args.batch_images), str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def store_bench(args: argparse.Namespace) -> None:
    """A random fp16 store of `--store-gb` GB at D `--dim`, trained streamed under `--budget`; beside it
    the in-memory path on a `--in-memory-gb` store of the same tokens' shape (it must fit the machine)."""
    side = int(args.tokens_per_image**0.5)
    per_image = side * side * args.dim * 2
    work = Path(args.workdir)
    for name, gb in (("big", args.store_gb), ("small", args.in_memory_gb)):
        root = work / name
        if not (root / "manifest.json").is_file():
            t0 = time.perf_counter()
            write_random_store(root, images=int(gb * 1e9) // per_image, grid=(side, side), dim=args.dim)
            print(f"wrote {name} store: {gb} GB in {time.perf_counter() - t0:.0f} s", flush=True)
    streamed = _train_from_store(work / "big", args.budget, "auto", args)
    resident = _train_from_store(work / "small", "100GB", "never", args)
    store_bytes = sum(f.stat().st_size for f in (work / "big").glob("shard_*"))
    print(f"store {store_bytes / 1e9:.2f} GB on disk; budget {args.budget} ({parse_size(args.budget) / 2**30:.2f} GiB)")
    for name, r in (("streamed", streamed), ("in memory (small store)", resident)):
        print(
            f"{name}: peak RSS {r['peak'] / 2**30:.2f} GiB (of which training {(r['peak'] - r['before']) / 2**30:.2f}"
            f" GiB), {r['tokens_per_s']:,.0f} tok/s, {r['seconds']:.0f} s, feed {r['feed']}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=131072)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--tokens-per-image", type=int, default=256)
    p.add_argument("--batch-images", type=int, default=16)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--sharded-single", action="store_true", help="also time latent-sharded code in a world of one")
    p.add_argument("--store-gb", type=float, default=None, help="instead: train streamed from a store of this size")
    p.add_argument("--budget", default="1.5GiB", help="--max-host-memory of the streamed run (with --store-gb)")
    p.add_argument("--in-memory-gb", type=float, default=0.5, help="the in-memory baseline's store (with --store-gb)")
    p.add_argument("--workdir", default="/tmp/spg_scale_bench", help="where the stores are written (with --store-gb)")
    args = p.parse_args()
    if args.store_gb is not None:
        store_bench(args)
        return

    print(
        f"machine: {platform.node()} {os.cpu_count()} CPU cores, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(0)}" if args.device == "cuda" else "")
    )
    print(
        f"tokens {args.tokens} x D {args.dim}, M {args.width}, k {args.k}, batch "
        f"{args.batch_images * args.tokens_per_image} tokens, {args.epochs} epochs, {args.threads} thread(s)/process"
    )
    for world in args.nproc:
        res = _run_world(world, args)
        rate = statistics.median(res["data_parallel"][1:] or res["data_parallel"])
        line = f"{world} process(es): data-parallel {rate:,.0f} tok/s"
        if "latent_sharded" in res:
            line += (
                f", latent-sharded {statistics.median(res['latent_sharded'][1:] or res['latent_sharded']):,.0f} tok/s"
            )
        print(line + f" (FVU {res['fvu']:.4f})")
    print(f"streaming reader (1 process, {args.device}): {_stream_rate(args):,.0f} tok/s")


if __name__ == "__main__":
    main()
