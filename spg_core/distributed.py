"""torch.distributed for SPG: who am I, how many are we, and the few collectives the engine uses.

Launched by `torchrun` (which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
`init_from_env` joins the process group once: NCCL when CUDA is present, gloo on CPU.
Without torchrun nothing is initialised and every helper here is the single-process
identity (rank 0 of 1, collectives return their input), so single-process code paths
need no branches.

Work is shared by deterministic rules that depend only on (rank, world size), never on
timing: shard `i` of a token store belongs to rank `i % world`, and each global batch is
cut into `world` contiguous slices (`batch_slice`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import SPGError

# Collectives wait this long for a missing rank before failing (default: NCCL/gloo's 10/30 min).
TIMEOUT_ENV = "SPG_DIST_TIMEOUT_S"

_solo_depth = 0  # > 0 inside `main_only()`: this rank acts as a world of one


@dataclass(frozen=True)
class World:
    """This process's place: rank in [0, size), local_rank on its node, size = number of processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 for this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The world this process belongs to now (rank 0 of 1 when no group is initialised)."""
    if _solo_depth or not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def rank() -> int:
    return current().rank


def world_size() -> int:
    return current().size


def is_main() -> bool:
    return current().is_main


def torchrun_env(rank: int, world: int, port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """The variables torchrun sets for one process of a one-node world (what `init_from_env` reads): for
    spawning a world without torchrun, as the tests and the scale benchmark do."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_WORLD_SIZE": str(world),
        "MASTER_ADDR": host,
        "MASTER_PORT": str(port),
    }


def init_from_env(backend: str | None = None) -> World:
    """Join the process group described by torchrun's environment variables (once).

    backend: None picks NCCL when CUDA is available, else gloo. On CUDA each process is
    pinned to GPU `LOCAL_RANK`, so `--device auto` / `cuda` means "my GPU".
    """
    if not launched_by_torchrun():
        return World()
    if dist.is_initialized():
        return current()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise SPGError(
            f"WORLD_SIZE is set but {', '.join(missing)} is not",
            fix="launch with `torchrun --nproc-per-node N -m spg_core.cli ...`, which sets them all",
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda and backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    timeout = os.environ.get(TIMEOUT_ENV)
    kwargs: dict[str, Any] = {"timeout": timedelta(seconds=float(timeout))} if timeout else {}
    dist.init_process_group(backend=backend, init_method="env://", **kwargs)
    return current()


def destroy() -> None:
    """Leave the process group (a no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_only() -> Iterator[None]:
    """Within this block the calling rank acts alone: every helper sees a world of one.

    For work only rank 0 does after the collective stages (guides, evaluation, reports), so
    that a store it re-opens or a helper it calls never waits in a collective for the others.
    """
    global _solo_depth
    _solo_depth += 1
    try:
        yield
    finally:
        _solo_depth -= 1


# -- deterministic sharing of work ----------------------------------------------------------------


def owned(count: int, world: World | None = None) -> list[int]:
    """Items `0..count-1` this rank owns: item i belongs to rank i % size (round robin)."""
    world = world or current()
    return list(range(world.rank, count, world.size))


def batch_slice(batch_rows: int, world: World | None = None) -> slice:
    """This rank's contiguous rows of a global batch of `batch_rows`: the rows are cut into
    `size` parts whose lengths differ by at most one (the first ones longer), as
    `torch.tensor_split` does. A part may be empty when batch_rows < size."""
    world = world or current()
    base, extra = divmod(batch_rows, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


# -- collectives (identity in a world of one) --------------------------------------------------


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` in place across ranks (op: sum, min or max) and return it."""
    if world_size() > 1:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
    return tensor


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape and dtype on every rank), in rank order."""
    if world_size() == 1:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return parts


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient across ranks with one collective (flattened buffer).

    Callers scale each rank's loss so that the sum is the single-process gradient
    (see `sae_train`): a sum, not DDP's mean, because slices of a batch may differ in size.
    """
    if world_size() == 1:
        return
    for p in params:
        if p.grad is None:  # every rank must send the same layout, even an idle one
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
