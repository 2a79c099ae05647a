"""Atom index build: time and peak memory of the streaming top-P pass on random tokens.

    python benchmarks/atoms_bench.py                          # CPU, 1M then 10M tokens, D=64 M=1024 k=16
    python benchmarks/atoms_bench.py --device cuda --paper-scale   # D=1024, M=4096, k=64, 28x28 patches

The pass is `spg_core.atoms.stream_top_p`, fed an iterator of chunks (as
`build_atom_index` feeds it store shards). Each chunk is a pre-generated random
block plus a fresh per-chunk offset, so every token differs while generating
data costs nothing next to the pass; chunks are made on the CPU for a CPU run
(as memory-mapped shards would be) and on the GPU for a CUDA run (so the figure
is the index kernel, not the host's random generator). Sizes run in increasing
order in one process, so a flat peak across sizes shows the memory bound.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch

from spg_core.atoms import TokenChunk, stream_top_p
from spg_core.atoms.index import default_chunk_tokens
from spg_core.devices import resolve_device
from spg_core.memory import peak_resident_bytes
from spg_core.sae import TopKSAE

POOL = 4  # distinct random blocks cycled through


def random_chunks(
    total: int, patches: int, dim: int, chunk_images: int, categories: int, device: torch.device, seed: int = 0
) -> Iterator[TokenChunk]:
    """Chunks of `chunk_images` images (`patches` tokens each) until `total` tokens, with sparse masks."""
    gen = torch.Generator(device=device).manual_seed(seed)
    pool = [
        torch.randn(chunk_images, patches, dim, generator=gen, device=device, dtype=torch.float16) for _ in range(POOL)
    ]
    masks = [(torch.rand(chunk_images, patches, generator=gen, device=device) < 0.03).float() for _ in range(POOL)]
    cats = torch.arange(chunk_images, device=device) % categories
    images = -(-total // patches)
    for i, start in enumerate(range(0, images, chunk_images)):
        n = min(chunk_images, images - start)
        shift = torch.randn(dim, generator=gen, device=device, dtype=torch.float16) * 0.1
        yield TokenChunk(start, pool[i % POOL][:n] + shift, masks[i % POOL][:n], cats[:n])


def peak_rss_mib() -> float:
    return peak_resident_bytes() / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=float, nargs="+", default=[1e6, 1e7], help="store sizes in tokens")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--patches", type=int, default=784, help="tokens per image (28 x 28)")
    ap.add_argument("--top-p", type=int, default=16)
    ap.add_argument("--categories", type=int, default=12)
    ap.add_argument("--chunk-tokens", type=int, default=None, help="default: the device's budget")
    ap.add_argument("--paper-scale", action="store_true", help="D=1024, M=4096, k=64 (the paper's SAE)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    args = ap.parse_args()
    if args.paper_scale:
        args.dim, args.width, args.k = 1024, 4096, 64
    device = resolve_device(args.device)
    torch.manual_seed(0)
    sae = TopKSAE(args.dim, args.width, args.k).to(device).requires_grad_(False)
    chunk_tokens = args.chunk_tokens or default_chunk_tokens(sae, device)
    chunk_images = max(1, chunk_tokens // args.patches)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(
        f"device {name}; D={args.dim} M={args.width} k={args.k} P={args.top_p}; "
        f"{args.patches} tokens/image, {chunk_images} images ({chunk_images * args.patches:,} tokens)/chunk"
    )
    print(f"baseline peak RSS {peak_rss_mib():,.0f} MiB (imports, SAE)")
    for total in sorted(int(t) for t in args.tokens):
        chunks = random_chunks(total, args.patches, args.dim, chunk_images, args.categories, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        acc, counts = stream_top_p(
            chunks, sae, top_p=args.top_p, num_patches=args.patches, num_categories=args.categories, device=device
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        gpu = (
            f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB"
            if device.type == "cuda"
            else ""
        )
        filled = int((acc.token >= 0).sum())
        print(
            f"{counts.num_tokens:>12,} tokens: {seconds:7.2f} s ({counts.num_tokens / seconds / 1e6:6.2f} M tok/s), "
            f"peak RSS {peak_rss_mib():,.0f} MiB{gpu}; {filled:,} of {acc.values.numel():,} slots filled"
        )


if __name__ == "__main__":
    main()
