"""Read checkpoints of the official SPG code (riips/SPG) and write an ordinary SPG Studio run.

Layout (docs/SPG_METHOD.md, "Official checkpoint layout"), every file a `torch.save` pickle
read with `torch.load(..., weights_only=True)` only, never a full unpickle:

    SAE       {"epoch": N, "sae_state_dict": {"sae_list.0.encoder.W.weight": [M, D],
                                               "sae_list.0.decoder.dictionary._D": [M, D]}}
              (older runs: the same keys without the "sae_list.0." prefix); no bias exists
    dead mask bool [M], True = dead
    guides    {"epoch": N, "modules_dict_state_dict": {"guide_0._guide_tensors": [4, M], ...},
               "ema_modules_dict_state_dict": {the same keys}}   rows: global normal, global
               anomaly, local normal, local anomaly (theta, before the ReLU)

The run written is an official-protocol run (config.json `protocol: official`) that
eval, predict, atoms and the dashboard open like any other.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..atomic import file_sha256, write_json
from ..backbones import load_backbone
from ..config import ExtractConfig, RunConfig
from ..errors import SPGError
from ..guides import GuideSet
from ..pipeline import extract
from ..protocols import OFFICIAL, overrides
from ..run_lock import LOCK_FILE, command_line, run_lock
from ..runs import GUIDES_FILE, GUIDES_RECORD_FILE, SAE_FILE, SAE_RECORD_FILE, RunDir
from ..sae import TopKSAE

SAE_PREFIX = "sae_list.0."
ENCODER_KEY = "encoder.W.weight"
DICTIONARY_KEY = "decoder.dictionary._D"
GUIDE_KEY = "guide_0._guide_tensors"
EMA_SECTION = "ema_modules_dict_state_dict"
RAW_SECTION = "modules_dict_state_dict"


def load_checkpoint(path: str | Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with every failure (missing, truncated, a pickle of
    non-tensor objects) turned into one SPGError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise SPGError(f"{what} not found", path=str(path), fix="check the path to the official checkpoint")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise SPGError(
            f"{what} holds objects other than tensors, so it is not read (a full unpickle could run "
            f"code): {str(exc).splitlines()[0]}",
            path=str(path),
            fix="pass the checkpoint written by the official code (tensors and plain containers only)",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SPGError(
            f"{what} is truncated or not a torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            path=str(path),
            fix="copy the file again from the official run's checkpoints/ folder",
        ) from None


def _tensor(section: dict[str, Any], key: str, path: Path, shape: tuple[int | None, ...], what: str) -> torch.Tensor:
    """`section[key]`, checked to be a tensor of `shape` (None = any size)."""
    value = section.get(key) if isinstance(section, dict) else None
    if value is None:
        found = ", ".join(sorted(section)[:8]) if isinstance(section, dict) else type(section).__name__
        raise SPGError(
            f"{what}: key '{key}' is missing (found: {found or 'nothing'})",
            path=str(path),
            fix="pass the official checkpoint of the right stage (SAE: checkpoints/epoch_N.pth of "
            "the SAE run; guides: of the guide run)",
        )
    if not isinstance(value, torch.Tensor):
        raise SPGError(
            f"{what}: key '{key}' is a {type(value).__name__}, not a tensor",
            path=str(path),
            fix="pass the official checkpoint unmodified",
        )
    if len(value.shape) != len(shape) or any(w is not None and w != g for w, g in zip(shape, value.shape)):
        want = "[" + ", ".join("*" if w is None else str(w) for w in shape) + "]"
        raise SPGError(
            f"{what}: key '{key}' has shape {list(value.shape)}, expected {want}",
            path=str(path),
            fix="the checkpoint belongs to another backbone or SAE width: pass the matching files "
            "and --backbone / --weights of the official run",
        )
    return value


def read_official_sae(path: str | Path, dim: int, k: int) -> TopKSAE:
    """The official SAE checkpoint -> a bias-free TopKSAE (atoms normalised), checked against `dim`."""
    path = Path(path)
    ckpt = load_checkpoint(path, "official SAE checkpoint")
    state = ckpt.get("sae_state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise SPGError(
            "official SAE checkpoint holds no state dict",
            path=str(path),
            fix="pass checkpoints/epoch_N.pth of the official SAE run",
        )
    prefix = SAE_PREFIX if SAE_PREFIX + ENCODER_KEY in state else ""
    atoms = _tensor(state, prefix + DICTIONARY_KEY, path, (None, dim), "official SAE checkpoint")
    width = atoms.shape[0]
    encoder = _tensor(state, prefix + ENCODER_KEY, path, (width, dim), "official SAE checkpoint")
    if not 0 < k <= width:
        raise SPGError(
            f"--k {k} must be between 1 and the checkpoint's width {width}",
            path=str(path),
            fix="pass the TopK k of the official run (default 32)",
        )
    sae = TopKSAE(dim, width, k, bias=False)
    with torch.no_grad():
        rows = atoms.float()
        sae.W_dec.copy_((rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-8)).t())
        sae.W_enc.copy_(encoder.float())
    return sae


def read_dead_mask(path: str | Path, width: int) -> torch.Tensor:
    """The official dead-atom mask file -> bool `[M]`."""
    path = Path(path)
    mask = load_checkpoint(path, "official dead-atom mask")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != (width,):
        got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SPGError(
            f"official dead-atom mask: expected a bool tensor [{width}], got {got}",
            path=str(path),
            fix="pass checkpoints/dead_atom_mask_layer_24.pt of the same SAE run",
        )
    return mask


def read_official_guides(path: str | Path, width: int, *, ema: bool = True) -> torch.Tensor:
    """The official guide checkpoint -> theta `[4, M]` (the EMA copy by default, as the official
    evaluation uses)."""
    path = Path(path)
    ckpt = load_checkpoint(path, "official guide checkpoint")
    section_name = EMA_SECTION if ema else RAW_SECTION
    section = ckpt.get(section_name) if isinstance(ckpt, dict) else None
    if section is None:
        raise SPGError(
            f"official guide checkpoint: key '{section_name}' is missing",
            path=str(path),
            fix="pass checkpoints/epoch_N.pth of the official guide run"
            + ("" if not ema else ", or --no-ema if it was saved without an EMA"),
        )
    return _tensor(section, GUIDE_KEY, path, (4, width), f"official guide checkpoint ({section_name})")


def import_official(
    *,
    sae_checkpoint: str,
    guide_checkpoint: str,
    out: str,
    backbone: str,
    dead_mask: str | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    layer: int | None = None,
    k: int = 32,
    ema: bool = True,
    guide_variant: str = "relu_l1",
    guide_topk: int = 32,
    aux: str | None = None,
    target: str | None = None,
    device: str = "auto",
) -> RunDir:
    """Read the official files, check them against the backbone, and write the run `out`."""
    run = RunDir(out)
    if run.path.exists() and (not run.path.is_dir() or any(p.name != LOCK_FILE for p in run.path.iterdir())):
        raise SPGError(
            "--out must be a new or empty directory",
            path=str(run.path),
            fix="choose another --out; an import never overwrites a run",
        )
    bb = load_backbone(backbone, weights, device=device, protocol=OFFICIAL, image_size=image_size, layer=layer)
    sae = read_official_sae(sae_checkpoint, bb.dim, k)
    if dead_mask is not None:
        sae.dead = read_dead_mask(dead_mask, sae.width)
    theta = read_official_guides(guide_checkpoint, sae.width, ema=ema)
    pair = GuideSet(sae.width, guide_variant, topk=guide_topk, form="official", dead=sae.dead)
    with torch.no_grad():
        pair.theta.copy_(theta.float())
        pair.theta_ema.copy_(theta.float())

    d = overrides(OFFICIAL)
    cfg = RunConfig.from_dict(
        {
            **d,
            "protocol": OFFICIAL,
            "backbone": backbone,
            "weights": weights,
            "aux": aux or "imported",
            "target": target or RunConfig.target,
            "device": device,
        }
    )
    cfg = replace(
        cfg,
        sae=replace(cfg.sae, width=sae.width, k=k),
        guides=replace(cfg.guides, variant=guide_variant, topk=guide_topk),
    )
    sources = {
        name: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
        for name, p in (("sae", sae_checkpoint), ("guides", guide_checkpoint), ("dead_mask", dead_mask))
        if p is not None
    }
    extra: dict[str, Any] = {
        "backbone_identity": bb.identity(),
        "imported_from": {"code": "riips/SPG", **sources, "guides_copy": "ema" if ema else "raw"},
    }
    if aux:
        extra["aux_store"] = str(extract(aux, bb, ExtractConfig(quiet=True)).root)
    with run_lock(run.path, command_line()):
        run.write_config(cfg, extra)
        sae.save(str(run.file(SAE_FILE)), {"backbone": bb.identity(), "method": "spg", "imported": True})
        dead = None if sae.dead is None else int(sae.dead.sum())
        write_json(
            run.file(SAE_RECORD_FILE),
            {
                "config": cfg.to_dict()["sae"],
                "method": "spg",
                "trained": False,
                "note": "imported from the official code",
                "dead_atoms": dead,
            },
        )
        pair.save(str(run.file(GUIDES_FILE)), {"backbone": bb.identity(), "method": "spg", "imported": True})
        write_json(
            run.file(GUIDES_RECORD_FILE),
            {
                "config": cfg.to_dict()["guides"],
                "note": "imported from the official code",
                "provenance": {"sae_sha256": run.digest(SAE_FILE)},
            },
        )
    return run
