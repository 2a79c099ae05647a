"""SAE training throughput on 1 and N processes (torch.distributed), data-parallel and latent-sharded.

    python benchmarks/scale_bench.py                          # CPU, gloo, 1 and 2 processes
    python benchmarks/scale_bench.py --device cuda --nproc 1 2   # one GPU per process, NCCL

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
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spg_core import distributed
from spg_core.atomic import save_tensors, write_json
from spg_core.config import SAEConfig
from spg_core.sae_sharded import train_latent_sharded
from spg_core.sae_train import train_sae
from spg_core.store import TokenStore
from spg_core.token_stream import ShardStream


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tokens(n: int, dim: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=gen).to(torch.float16)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
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
        mp.start_processes(_worker, args=(world, _free_port(), args, out), nprocs=world, start_method="spawn")
        return json.loads(Path(out).read_text())


def _stream_rate(args: argparse.Namespace) -> float:
    """Tokens/s the prefetching reader delivers from a store of `args.tokens` tokens (one process)."""
    per_image, shard_images = args.tokens_per_image, 64
    images = args.tokens // per_image
    tokens = _tokens(images * per_image, args.dim).reshape(images, per_image, args.dim)
    with tempfile.TemporaryDirectory() as tmp:
        shards = []
        for i, lo in enumerate(range(0, images, shard_images)):
            part = tokens[lo : lo + shard_images]
            save_tensors(
                Path(tmp) / f"shard_{i:05d}.safetensors",
                {"tokens": part, "masks": torch.zeros(len(part), 1, dtype=torch.uint8)},
            )
            shards.append({"file": f"shard_{i:05d}.safetensors", "start": lo, "count": len(part)})
        side = int(per_image**0.5)
        write_json(
            Path(tmp) / "manifest.json",
            {
                "key": {"identity": {"grid": [side, per_image // side], "image_size": 2, "dim": args.dim}},
                "complete": True,
                "images": [{"category": "x", "label": 0}] * images,
                "shards": shards,
            },
        )
        stream = ShardStream(
            TokenStore(tmp), args.batch_images * per_image, device="cuda" if args.device == "cuda" else "cpu"
        )
        t0 = time.perf_counter()
        n = sum(len(b) for b in stream.epoch(0))
        return n / (time.perf_counter() - t0)


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
    args = p.parse_args()

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
