"""Training loop for the TopK SAE (Stage 1), kept apart from the model as in `sparsify`.

A batch holds as many tokens as `batch_images` images have (the paper's batch of 16
images), drawn as `cfg.order` says (sae_data.py: tokens shuffled one by one, or whole images
in the official code's seeded order) from tokens in memory or streamed from the store. When
every token fits on the device it is moved there once, so the loop has no host round trip.
With a checkpoint file, each epoch's end is saved and a killed run resumes from it
(train_checkpoint.py).

With `cfg.auxk > 0` the loss adds the AuxK term (Gao et al.; official rule, riips/SPG
`src/modules/sae/sae.py`): a latent is dead for AuxK when no code value exceeded
`cfg.auxk_threshold` in its last `auxk_dead_tokens // tokens_of_that_step` steps; the
top `auxk` pre-activations of the dead latents reconstruct the detached residual.
After training, `dead_atom_mask` marks the atoms that never fire on the whole set.

Under torchrun the loop is data-parallel (the `distributed.*` calls, identities in a
single process): every rank draws the same global batch order, computes on its slice of
each global batch, and the gradients are summed across ranks with each rank's loss weighted
by its share of the batch, so every step equals the single-process step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed, train_checkpoint
from .config import SAEConfig
from .sae import SparseCode, TopKSAE
from .sae_data import ResidentTokens, StreamedTokens

TokenSource = ResidentTokens | StreamedTokens

# Keep tokens resident on the device when they take at most this share of its free memory.
_RESIDENT_SHARE = 0.6


def _fits_on(device: torch.device, nbytes: int) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < _RESIDENT_SHARE * free


@torch.no_grad()
def dead_atom_mask(sae: TopKSAE, tokens: torch.Tensor | Iterable[torch.Tensor], *, batch: int = 65536) -> torch.Tensor:
    """`[M]` bool, True for atoms whose code is never > 0 on any token (official `count_active == 0`):
    of `[T, D]` tokens, or of every `[b, D]` chunk of an iterable (one pass over a store)."""
    device = sae.W_dec.device
    fired = torch.zeros(sae.width, dtype=torch.bool, device=device)
    chunks = (tokens[i : i + batch] for i in range(0, tokens.shape[0], batch)) if torch.is_tensor(tokens) else tokens
    for chunk in chunks:
        code = sae.encode(chunk.to(device).float())
        fired[code.indices[code.values > 0]] = True
    return ~fired


@torch.no_grad()
def evaluate_sae(sae: TopKSAE, tokens: torch.Tensor | TokenSource, *, batch: int = 65536) -> dict[str, float]:
    """FVU and dead-latent fraction over `[T, D]` tokens (any device) or a token source, in two
    passes of `[<= batch, D]` chunks (the mean, then the residuals), sums all-reduced over ranks."""
    device = sae.W_dec.device
    source = (
        tokens if not torch.is_tensor(tokens) else ResidentTokens(tokens, 1, batch, order="studio", seed=0, width=1)
    )
    n_all = source.num_tokens
    resid = torch.zeros((), dtype=torch.float64, device=device)
    fired = torch.zeros(sae.width, dtype=torch.bool, device=device)
    mean = torch.zeros(sae.dim, dtype=torch.float64, device=device)
    for chunk in source.chunks(batch):
        mean += chunk.to(device).float().sum(0).double()
    mean = (distributed.all_reduce(mean) / n_all).float()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for chunk in source.chunks(batch):
        f = chunk.to(device).float()
        recon, code = sae(f)
        resid += (f - recon).pow(2).sum().double()
        total += (f - mean).pow(2).sum().double()
        fired[code.indices[code.values > 0]] = True
    resid, total = distributed.all_reduce(resid), distributed.all_reduce(total)
    fired = distributed.all_reduce(fired.to(torch.uint8), "max").bool()
    return {"fvu": float(resid / total.clamp_min(1e-12)), "dead_fraction": float(1 - fired.float().mean())}


def mark_fired(since_fired: torch.Tensor, code: SparseCode, n_tokens: int) -> None:
    """Advance every latent's silence counter by `n_tokens` and reset those that fired.

    Done with a scatter into an `[M + 1]` buffer (slot M absorbs the zero activations)
    rather than boolean indexing, which would force a device-to-host sync every step."""
    width = since_fired.shape[0]
    idx = torch.where(code.values > 0, code.indices, torch.full_like(code.indices, width))
    fired = torch.zeros(width + 1, dtype=torch.bool, device=since_fired.device)
    fired.scatter_(0, idx.flatten(), True)
    since_fired.add_(n_tokens).masked_fill_(fired[:width], 0)


def mark_silent_steps(steps_silent: torch.Tensor, code: SparseCode, threshold: float) -> None:
    """Official AuxK statistic, per step: every latent's count of steps without a code value
    above `threshold` grows by one, and restarts at 1 for the latents that did exceed it."""
    width = steps_silent.shape[0]
    idx = torch.where(code.values > threshold, code.indices, torch.full_like(code.indices, width))
    fired = torch.zeros(width + 1, dtype=torch.bool, device=steps_silent.device)
    fired.scatter_(0, idx.flatten(), True)
    steps_silent.masked_fill_(fired[:width], 0).add_(1)


def auxk_dead_steps(cfg: SAEConfig, tokens_per_step: int) -> int:
    """Silent steps after which a latent is dead for AuxK (official: 10M tokens' worth, at least 1)."""
    return max(1, cfg.auxk_dead_tokens // max(1, tokens_per_step))


def auxk_loss(
    sae: TopKSAE, f: torch.Tensor, recon: torch.Tensor, pre: torch.Tensor, dead: torch.Tensor, k_aux: int
) -> torch.Tensor:
    """AuxK: reconstruct the detached residual `f - f^` `[T, D]` from the `k_aux` largest
    pre-activations `[T, M]` of the `dead` `[M]` latents; mean over D and tokens.

    As the official code: live latents' pre-activations are zeroed (not -inf) before the
    top-k and values are clamped at 0, so with fewer than k_aux dead latents the rest
    contribute nothing; no decoder bias (it fits a residual)."""
    top = (pre * dead.to(pre.dtype)).topk(min(k_aux, pre.shape[-1]), dim=-1)
    # A dense decode, as the official code: with k_aux in the hundreds a gathered (embedding_bag)
    # decode and its backward ran several times slower than the matmul on CPU.
    z_aux = torch.zeros_like(pre).scatter_(-1, top.indices, top.values.clamp_min(0))
    e_hat = z_aux @ sae.atoms().t()
    resid = (f - recon).detach()
    return torch.nan_to_num((resid - e_hat.float()).pow(2).mean(-1)).mean()


def reconstruction_loss(
    sae: TopKSAE, f: torch.Tensor, bf16: bool, sparse_decode: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reconstruction error of `[T, D]` tokens, and the code (values, indices `[T, k]`).

    Studio form: squared error summed over D; official form: averaged over D (their MSE)."""
    with torch.autocast(f.device.type, dtype=torch.bfloat16, enabled=bf16):
        recon, code = sae(f, sparse_decode=sparse_decode)
    err = (recon.float() - f).pow(2)
    return (err.sum(-1) if sae.bias else err.mean(-1)).mean(), code.values, code.indices


def loss_with_auxk(
    sae: TopKSAE, f: torch.Tensor, cfg: SAEConfig, steps_silent: torch.Tensor, dead_steps: int, bf16: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official step loss: MSE + auxk_coef * AuxK, updating the silence statistic first (as the
    official forward does, so this step's firing counts). Returns (loss, values, indices)."""
    with torch.autocast(f.device.type, dtype=torch.bfloat16, enabled=bf16):
        pre = sae.pre_activation(f)
        top = pre.topk(sae.k, dim=-1, sorted=False)
        code = SparseCode(torch.relu(top.values), top.indices)
        recon = sae.decode_dense(code.dense(sae.width))
    with torch.no_grad():
        mark_silent_steps(steps_silent, code, cfg.auxk_threshold)
        # Under torchrun a latent fired this step if it fired on any rank's slice.
        distributed.all_reduce(steps_silent, "min")
    recon = recon.float()
    err = (recon - f).pow(2)
    loss = (err.sum(-1) if sae.bias else err.mean(-1)).mean()
    dead = steps_silent > dead_steps
    # Always computed, and counted only when a latent is dead (the official loss is then 0): a
    # host sync on `dead.any()` every step would cost more than the top-k it saves.
    loss = loss + cfg.auxk_coef * auxk_loss(sae, f, recon, pre.float(), dead, cfg.auxk) * dead.any()
    return loss, code.values, code.indices


def share_of_batch(loss: torch.Tensor, rows: int, batch_rows: int) -> torch.Tensor:
    """A rank's mean loss over its `rows` of a global batch of `batch_rows`, weighted by its share,
    so that the ranks' weighted losses (and gradients) sum to the global batch's mean.
    An empty slice (a batch smaller than the world) contributes zero, not NaN."""
    if rows == batch_rows:
        return loss
    return loss * (rows / batch_rows) if rows else loss.nan_to_num(0.0) * 0.0


def train_sae(
    tokens: torch.Tensor | TokenSource,
    cfg: SAEConfig,
    *,
    tokens_per_image: int,
    device: torch.device,
    progress: bool = True,
    bf16: bool | None = None,
    sparse_decode: bool = False,
    compile: bool | str = False,
    checkpoint: Path | None = None,
    data_key: Any = None,
) -> tuple[TopKSAE, list[dict[str, Any]]]:
    """Train a TopK SAE on `[T, D]` tokens (fp16/fp32, any device, image-major) or a token source
    (sae_data: resident or streamed from a store).

    Returns the SAE and per-epoch history: loss, FVU, dead-latent fraction, tokens/s.
    `bf16` (default: on CUDA) runs the matmuls under bf16 autocast; `sparse_decode` gathers the
    k atoms per token instead of a dense `[T, M] x [M, D]` decode; `compile` (True, or a
    torch.compile mode such as "reduce-overhead") fuses the forward and loss (CUDA, long runs).
    `checkpoint`: a file written at each epoch's end and resumed from when it matches these
    settings and `data_key` (an identity of the tokens); the caller deletes it when done.
    """
    batch = cfg.batch_images * tokens_per_image
    if torch.is_tensor(tokens):
        if tokens.device != device and _fits_on(device, tokens.numel() * tokens.element_size()):
            tokens = tokens.to(device)
        source: TokenSource = ResidentTokens(
            tokens, tokens_per_image, batch, order=cfg.order, seed=cfg.seed, width=cfg.width
        )
    else:
        source = tokens
    sae = TopKSAE(source.dim, cfg.width, cfg.k, seed=cfg.seed, bias=cfg.bias).to(device)
    if sae.bias:
        sae.init_bias(source.sample(source.pass_rows).to(device), cfg.init_bias)
    # Fused Adam: one kernel for all parameters instead of a handful per tensor.
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), fused=device.type == "cuda")
    use_bf16 = (device.type == "cuda") if bf16 is None else bf16
    n = source.num_tokens
    steps = math.ceil(n / batch)
    # Tokens since each latent last fired: a latent silent for `dead_after_tokens` is dead.
    since_fired = torch.zeros(cfg.width, dtype=torch.long, device=device)
    steps_silent = torch.zeros(cfg.width, dtype=torch.long, device=device)  # AuxK's statistic
    key = train_checkpoint.fingerprint(asdict(cfg), tokens_per_image, n, data_key, distributed.world_size())
    history: list[dict[str, Any]] = []
    start = 0
    resumed = train_checkpoint.resume(checkpoint, opt, sae, "sae", key=key, stage="SAE training", epochs=cfg.epochs)
    if resumed is not None:
        state, start, history = resumed
        since_fired.copy_(state["since_fired"])
        steps_silent.copy_(state["steps_silent"])
        source.load_state({k: v for k, v in state.items() if k.startswith("rng_")})
    step_loss = reconstruction_loss
    if compile:
        step_loss = torch.compile(reconstruction_loss, mode=compile if isinstance(compile, str) else None)
    bar = tqdm(total=cfg.epochs * steps, initial=start * steps, desc="train SAE", unit="step", disable=not progress)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        # This rank's slice of each global batch; gathered (or read from the store) and copied ahead.
        for f, batch_rows in source.epoch(epoch, device):
            if cfg.auxk > 0:
                # Official: the dead rule's step count comes from this step's own token count.
                dead_steps = auxk_dead_steps(cfg, batch_rows)
                loss, values, indices = loss_with_auxk(sae, f, cfg, steps_silent, dead_steps, use_bf16)
            else:
                loss, values, indices = step_loss(sae, f, use_bf16, sparse_decode)
            loss = share_of_batch(loss, f.shape[0], batch_rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            distributed.all_reduce_grads(list(sae.parameters()))
            sae.remove_parallel_grad()
            opt.step()
            sae.normalise_decoder()
            with torch.no_grad():
                loss_sum += loss.detach()
                # Every rank counts the global batch: the min over ranks is then the global count.
                mark_fired(since_fired, SparseCode(values, indices), batch_rows)
            bar.update(1)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        distributed.all_reduce(loss_sum)
        silent = distributed.all_reduce(since_fired.clone(), "min")
        rec = {
            "epoch": epoch,
            "loss": float(loss_sum) / steps,
            "tokens_per_s": n / max(seconds, 1e-9),
            "dead_fraction": float((silent >= cfg.dead_after_tokens).float().mean()),
        }
        history.append(rec)
        bar.set_postfix(loss=f"{rec['loss']:.4g}")
        if checkpoint is not None and distributed.is_main():
            state = {f"sae.{k}": v for k, v in sae.state_dict().items()}
            state.update(since_fired=since_fired, steps_silent=steps_silent, **source.state())
            train_checkpoint.save(checkpoint, state, opt, epochs_done=epoch + 1, history=history, key=key)
    bar.close()
    final = evaluate_sae(sae, source, batch=source.pass_rows)
    history.append({"epoch": "final", **final})
    return sae, history


def attach_dead_mask(sae: TopKSAE, tokens: torch.Tensor | Iterable[torch.Tensor], *, batch: int = 65536) -> int:
    """Compute the dead-atom mask over `[T, D]` tokens or chunks of them (the whole auxiliary set:
    patch and CLS tokens), keep it on the SAE, and return the number of dead atoms."""
    sae.dead = dead_atom_mask(sae, tokens, batch=batch)
    return int(sae.dead.sum())
