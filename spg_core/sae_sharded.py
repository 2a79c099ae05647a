"""Latent-sharded TopK SAE: each rank holds M / N atoms, one global top-k per token.

For dictionaries too wide for one device (16k-64k atoms at D 1024), as EleutherAI's
sparsify does it. Every rank sees the same tokens `[T, D]`; rank r holds encoder rows and
decoder columns `[lo_r, hi_r)` of the full SAE and the (replicated) decoder bias.

    z_r   = W_enc[lo:hi] (f - b_dec) + b_enc[lo:hi]        local pre-activations [T, M/N]
    cands = all_gather(top_k(z_r))                          N*k candidates per token, global ids
    code  = ReLU(top_k(cands))                              the same k as the full SAE's top-k
    f^    = sum_r W_dec[:, lo:hi] s_r + b_dec               all-reduce of each rank's partial decode

The global top-k of a token is among the union of the local top-k's, so the code equals the
unsharded SAE's. Gradients: the all-reduced decode passes its gradient through unchanged to
each rank (every rank computes the same loss), and the encoder input's gradient is summed
over ranks, which is what the replicated b_dec needs. Adam, the parallel-gradient removal and
the decoder normalisation are per column, so each rank applies them to its own atoms.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from . import distributed
from .config import SAEConfig
from .errors import SPGError
from .sae import SparseCode, TopKSAE, normalise_atoms_, remove_parallel_grad_
from .sae_data import ResidentTokens, StreamedTokens
from .sae_train import evaluate_sae


class _SumOverShards(torch.autograd.Function):
    """Forward: all-reduce (sum) of each rank's partial; backward: the gradient unchanged."""

    @staticmethod
    def forward(ctx: Any, partial: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce(partial.clone())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _SharedInput(torch.autograd.Function):
    """Forward: the input unchanged; backward: the sum of every rank's gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce(grad.contiguous().clone())


def global_topk(z_local: torch.Tensor, k: int, offset: int) -> SparseCode:
    """Local pre-activations `[T, w]` (atoms offset..offset+w) -> the global top-k code `[T, k]`.

    Each rank proposes its k best candidates (global ids); the k best of all N*k are kept.
    Every rank must call it with the same T. Values are ReLU'd, as TopKSAE.encode does.
    """
    kk = min(k, z_local.shape[1])
    top = z_local.topk(kk, dim=-1, sorted=False)
    values, indices = top.values, top.indices + offset
    if kk < k:  # a shard narrower than k pads with candidates that never win
        values = torch.cat([values, values.new_full((values.shape[0], k - kk), float("-inf"))], dim=1)
        indices = torch.cat([indices, indices.new_zeros((indices.shape[0], k - kk))], dim=1)
    all_values = torch.cat(distributed.all_gather(values), dim=1)
    all_indices = torch.cat(distributed.all_gather(indices), dim=1)
    best = all_values.topk(k, dim=-1, sorted=False)
    return SparseCode(values=torch.relu(best.values), indices=all_indices.gather(1, best.indices))


class LatentShardedSAE(nn.Module):
    """This rank's share of a TopK SAE: `W_enc` `[w, D]`, `b_enc` `[w]`, `W_dec` `[D, w]`, `b_dec` `[D]`."""

    def __init__(self, dim: int, width: int, k: int):
        super().__init__()
        world = distributed.current()
        if width % world.size:
            raise SPGError(
                f"a dictionary of {width} atoms does not split evenly over {world.size} processes",
                fix="choose --width a multiple of the number of processes",
            )
        self.dim, self.width, self.k = dim, width, k
        share = width // world.size
        self.lo, self.hi = world.rank * share, (world.rank + 1) * share
        self.W_enc = nn.Parameter(torch.zeros(share, dim))
        self.b_enc = nn.Parameter(torch.zeros(share))
        self.W_dec = nn.Parameter(torch.zeros(dim, share))
        self.b_dec = nn.Parameter(torch.zeros(dim))

    @classmethod
    def from_full(cls, sae: TopKSAE) -> LatentShardedSAE:
        """This rank's slice of a full SAE (every rank passes the same one)."""
        part = cls(sae.dim, sae.width, sae.k).to(sae.W_dec.device)
        with torch.no_grad():
            part.W_enc.copy_(sae.W_enc[part.lo : part.hi])
            part.b_enc.copy_(sae.b_enc[part.lo : part.hi])
            part.W_dec.copy_(sae.W_dec[:, part.lo : part.hi])
            part.b_dec.copy_(sae.b_dec)
        return part

    def gather_full(self) -> TopKSAE:
        """The whole SAE on every rank (for saving and for the single-device stages after training)."""
        full = TopKSAE(self.dim, self.width, self.k).to(self.W_dec.device)
        with torch.no_grad():
            full.W_enc.copy_(torch.cat(distributed.all_gather(self.W_enc.detach()), dim=0))
            full.b_enc.copy_(torch.cat(distributed.all_gather(self.b_enc.detach()), dim=0))
            full.W_dec.copy_(torch.cat(distributed.all_gather(self.W_dec.detach()), dim=1))
            full.b_dec.copy_(self.b_dec)
        return full

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, SparseCode]:
        """`[T, D]` (the same on every rank) -> (reconstruction `[T, D]`, global code `[T, k]`)."""
        x = _SharedInput.apply(f - self.b_dec)
        z = x @ self.W_enc.t() + self.b_enc.to(x.dtype)
        code = global_topk(z.detach(), self.k, self.lo)
        mine = (code.indices >= self.lo) & (code.indices < self.hi)
        local = (code.indices - self.lo).clamp(0, self.hi - self.lo - 1)
        # Values re-read from z so that they carry this rank's gradient; others' atoms weigh 0.
        values = z.gather(1, local).relu() * mine
        dense = z.new_zeros(z.shape).scatter_add(1, local, values)
        recon = _SumOverShards.apply(dense @ self.W_dec.t().to(dense.dtype)) + self.b_dec
        return recon, code


def train_latent_sharded(
    tokens: torch.Tensor, cfg: SAEConfig, *, tokens_per_image: int, device: torch.device, bf16: bool | None = None
) -> tuple[TopKSAE, list[dict[str, Any]]]:
    """Train a TopK SAE on `[T, D]` tokens with its atoms split over the ranks; the whole SAE back.

    Same initialisation, batch order and step as `sae_train.train_sae` (every rank reads the
    whole global batch), so in a world of one, or of N, it trains the same SAE.
    """
    full = TopKSAE(tokens.shape[1], cfg.width, cfg.k, seed=cfg.seed)
    sample = tokens[
        torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(cfg.seed))[:65536].to(tokens.device)
    ]
    full.init_bias(sample, cfg.init_bias)
    sae = LatentShardedSAE.from_full(full.to(device))
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas))
    use_bf16 = (device.type == "cuda") if bf16 is None else bf16
    batch, n = cfg.batch_images * tokens_per_image, tokens.shape[0]
    steps = math.ceil(n / batch)
    gen = torch.Generator(device=tokens.device).manual_seed(cfg.seed)
    since_fired = torch.zeros(sae.hi - sae.lo, dtype=torch.long, device=device)
    history: list[dict[str, Any]] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen, device=tokens.device)
        loss_sum = torch.zeros((), device=device)
        for s in range(steps):
            f = tokens[order[s * batch : (s + 1) * batch]].to(device, non_blocking=True).float()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                recon, code = sae(f)
            loss = (recon.float() - f).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            remove_parallel_grad_(sae.W_dec)  # per atom: this rank's columns alone
            opt.step()
            normalise_atoms_(sae.W_dec)
            with torch.no_grad():
                loss_sum += loss.detach()
                fired = torch.zeros(sae.width + 1, dtype=torch.bool, device=device)
                fired.scatter_(0, torch.where(code.values > 0, code.indices, sae.width).flatten(), True)
                since_fired.add_(f.shape[0]).masked_fill_(fired[sae.lo : sae.hi], 0)
        dead = distributed.all_reduce((since_fired >= cfg.dead_after_tokens).sum())
        history.append(
            {
                "epoch": epoch,
                "loss": float(loss_sum) / steps,
                "tokens_per_s": n / max(time.perf_counter() - t0, 1e-9),
                "dead_fraction": float(dead) / sae.width,
            }
        )
    return sae.gather_full(), history


def train_sharded(
    source: ResidentTokens | StreamedTokens, cfg: SAEConfig, tokens_per_image: int, device: torch.device
) -> tuple[TopKSAE, list[dict[str, Any]]]:
    """`--shard latents`: the studio-form SAE with its atoms split over the torchrun ranks
    (sae_sharded.py), from tokens in memory; the whole SAE and its history, FVU included."""
    if not cfg.bias or cfg.auxk or cfg.order != "studio":
        raise SPGError(
            "--shard latents trains the studio-form SAE only (biases, no AuxK, token order)",
            fix="add --protocol studio (or --sae-bias --auxk 0 --sae-order studio), or use --shard data",
        )
    if not isinstance(source, ResidentTokens):
        raise SPGError(
            "--shard latents reads its tokens from memory, and they do not fit --max-host-memory",
            fix="raise --max-host-memory (or give --stream never), or use --shard data, which streams",
        )
    sae, history = train_latent_sharded(source.tokens, cfg, tokens_per_image=tokens_per_image, device=device)
    history.append({"epoch": "final", **evaluate_sae(sae, source, batch=source.pass_rows)})
    return sae, history
