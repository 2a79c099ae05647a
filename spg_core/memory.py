"""Host memory budgets: `--max-host-memory` sizes, the machine's default, and what streamed SAE training needs.

Sizes are written as a number with an optional unit: `512MB`, `4GiB`, `1.5G`, `2000000000`.
Decimal units (KB, MB, GB, TB; K, M, G, T) are powers of 1000, binary ones (KiB, MiB, GiB,
TiB) powers of 1024, as their names say.
"""

from __future__ import annotations

import os
import re

from .errors import SPGError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")
DEFAULT_SHARE = 0.5  # of physical memory, when no budget is given: room for the OS and the page cache


def parse_size(text: str) -> int:
    """`"512MB"` -> 512_000_000 bytes; SPGError naming the value otherwise."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS or float(match.group(1)) <= 0:
        raise SPGError(
            f"--max-host-memory {text!r} is not a size",
            fix="give a positive number of bytes with an optional unit, e.g. 512MB, 4GiB or 1.5G",
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(nbytes: int) -> str:
    """Bytes as the smallest whole MiB / GiB that holds them, e.g. `1.25GiB`, `96MiB`."""
    if nbytes >= 2**30:
        return f"{-(-nbytes * 100 // 2**30) / 100:g}GiB"
    return f"{-(-nbytes // 2**20)}MiB"


def physical_memory() -> int:
    """Bytes of physical memory of this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def budget_bytes(text: str | None) -> int:
    """The budget `--max-host-memory` gives, or half the machine's physical memory when it is None."""
    return int(physical_memory() * DEFAULT_SHARE) if text is None else parse_size(text)


def streamed_sae_bytes(
    window_rows: int, batch_rows: int, dim: int, width: int, k: int, itemsize: int, prefetch: int
) -> int:
    """Host bytes streamed SAE training holds at its peak, beyond the Python process itself.

    window_rows: tokens read together (the shuffled window, plus the carried-over remainder of
    the last one). Counted: the window `[R, D]` in the store's dtype and its row permutation
    (int64); `prefetch + 2` batches `[B, D]` (queued, being made, in use), each in the store's
    dtype and as float32; one step's float32 activations (pre-activations `[B, M]` and their
    gradient, the dense code, AuxK's copies: 6 `[B, M]`; input, reconstruction, error and
    gradients: 6 `[B, D]`); the SAE with its gradients and Adam moments (4 copies of 2 `[M, D]`);
    and a quarter more for the allocators' slack (measured: a 7.5 MB estimate peaked at 17 MB
    without it, on a 2-core CPU VM, 2026-12-07).
    """
    window = window_rows * (dim * itemsize + 8)
    batches = (prefetch + 2) * batch_rows * dim * (4 + itemsize)
    step = 6 * batch_rows * width * 4 + 6 * batch_rows * dim * 4 + batch_rows * k * 16
    model = 8 * width * dim * 4
    return (window + batches + step + model) * 5 // 4


def resident_sae_bytes(
    num_tokens: int, batch_rows: int, dim: int, width: int, k: int, itemsize: int, pass_rows: int = 65536
) -> int:
    """Host bytes of in-memory SAE training: every token twice (the shards read, then joined into one
    tensor), a step as above, and a statistics pass's chunk of `pass_rows` tokens (float32 input and
    reconstruction, 3 `[rows, M]` for the pre-activations and the code), with the same quarter of slack
    (measured: 1.5 GB peak for a 1.2 GB estimate without it, on a 2-core CPU VM, 2026-12-07)."""
    passes = min(pass_rows, num_tokens) * (2 * dim * 4 + 3 * width * 4) * 5 // 4
    tokens = 2 * num_tokens * dim * itemsize * 5 // 4
    return tokens + streamed_sae_bytes(0, batch_rows, dim, width, k, itemsize, 0) + passes


def peak_resident_bytes() -> int:
    """This process's peak resident memory in bytes (`VmHWM`, Linux), 0 where it cannot be read.

    Not `getrusage().ru_maxrss`: Linux carries that across `exec`, so a process spawned by a large one
    (a test runner) starts with its parent's peak and reports no growth at all.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_resident() -> bool:
    """Reset `VmHWM` to the present resident size (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
