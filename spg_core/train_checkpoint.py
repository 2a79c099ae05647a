"""Epoch-end training checkpoints: what a killed SAE or guide training needs to resume exactly.

One safetensors file per stage inside the run folder being written (`sae.ckpt.safetensors`,
`guides.ckpt.safetensors`), written atomically (temp file + rename) at the end of each epoch:
the trained tensors, the optimiser's moments and step counts, the random generators' states,
the per-step statistics; its JSON metadata holds the position (epochs done), the history so far,
the optimiser's parameter groups and a fingerprint of the settings and data. A checkpoint whose
fingerprint differs (another config, another store) is not resumed from: it is replaced. The
stage deletes its checkpoint once its final artifact is written.

Resuming on the same device gives bitwise the tensors of an uninterrupted run (CPU: tested).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import torch

from .atomic import load_tensors, save_tensors
from .errors import SPGError

_OPT = "optimizer."
SAE_CHECKPOINT = "sae.ckpt.safetensors"  # in the run folder being written, while the stage runs
GUIDES_CHECKPOINT = "guides.ckpt.safetensors"


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable settings and data identities."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(
    path: Path,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    epochs_done: int,
    history: list[dict[str, Any]],
    key: str,
) -> None:
    """Write the checkpoint atomically: `tensors` (model state, counters, generator states) and the optimiser."""
    state = optimizer.state_dict()
    flat = dict(tensors)
    for index, slots in state["state"].items():
        for name, value in slots.items():
            flat[f"{_OPT}{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    meta = {"epochs_done": epochs_done, "history": history, "key": key, "param_groups": state["param_groups"]}
    save_tensors(path, flat, meta)


def load(path: Path, optimizer: torch.optim.Optimizer, *, key: str) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The checkpoint's tensors (optimiser state already loaded into `optimizer`) and metadata, or None
    when there is none or it was made with other settings or data (then it is ignored, with a note)."""
    if not path.is_file():
        return None
    try:
        flat, meta = load_tensors(path, what="training checkpoint")
    except SPGError:
        print(f"note: ignoring an unreadable training checkpoint {path}; training starts afresh", file=sys.stderr)
        return None
    if meta.get("key") != key:
        print(f"note: {path} was made with other settings or data; training starts afresh", file=sys.stderr)
        return None
    slots: dict[int, dict[str, torch.Tensor]] = {}
    tensors = {}
    for name, value in flat.items():
        if name.startswith(_OPT):
            index, slot = name[len(_OPT) :].split(".", 1)
            slots.setdefault(int(index), {})[slot] = value
        else:
            tensors[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    return tensors, meta


def resume(
    path: Path | None,
    optimizer: torch.optim.Optimizer,
    module: torch.nn.Module,
    prefix: str,
    *,
    key: str,
    stage: str,
    epochs: int,
) -> tuple[dict[str, torch.Tensor], int, list[dict[str, Any]]] | None:
    """`load`, then `module`'s weights restored from the checkpoint's `prefix.` entries and a note on stderr:
    (every tensor of the checkpoint, epochs done, history so far), or None when training starts afresh."""
    resumed = load(path, optimizer, key=key) if path is not None else None
    if resumed is None:
        return None
    state, meta = resumed
    head = prefix + "."
    module.load_state_dict({k[len(head) :]: v for k, v in state.items() if k.startswith(head)})
    done = int(meta["epochs_done"])
    print(f"{stage} resumes after epoch {done} of {epochs} ({path})", file=sys.stderr)
    return state, done, list(meta["history"])


def remove(path: Path) -> None:
    """Delete the checkpoint (the stage finished)."""
    path.unlink(missing_ok=True)
