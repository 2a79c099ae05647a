"""Which torch device a run uses: one rule for the engine, the metrics and the tools."""

from __future__ import annotations

import torch

from .errors import SPGError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' or None -> CUDA when present, else CPU; asking for CUDA without it is an error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise SPGError(f"{str(device)!r} is not a device", fix="use 'auto', 'cpu' or 'cuda'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SPGError(
            f"device {str(device)!r} requested but CUDA is not available",
            fix="use --device cpu (or auto to pick automatically)",
        )
    return dev
