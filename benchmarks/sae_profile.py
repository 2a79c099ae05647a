"""Where one TopK SAE training step spends its time (torch.profiler, CUDA when present).

python benchmarks/sae_profile.py [--tokens 12544] [--dim 1024] [--width 4096] [--k 64]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from spg_core.sae import SparseCode, TopKSAE
from spg_core.sae_train import mark_fired, reconstruction_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=12544)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sae = TopKSAE(args.dim, args.width, args.k).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=device.type == "cuda")
    f = torch.randn(args.tokens, args.dim, device=device)
    since = torch.zeros(args.width, dtype=torch.long, device=device)

    def step() -> None:
        loss, values, indices = reconstruction_loss(sae, f, device.type == "cuda", False)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalise_decoder()
        mark_fired(since, SparseCode(values, indices), f.shape[0])

    for _ in range(5):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(10):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=18))


if __name__ == "__main__":
    main()
