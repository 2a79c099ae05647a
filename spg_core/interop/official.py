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
from .hydra_config import OfficialRun, config_beside, read_official_config
from .reconcile import check_dead_mask_run, check_same_sae, reconcile

SAE_PREFIX = "sae_list.0."
ENCODER_KEY = "encoder.W.weight"
DICTIONARY_KEY = "decoder.dictionary._D"
GUIDE_KEY = "guide_0._guide_tensors"
EMA_SECTION = "ema_modules_dict_state_dict"
RAW_SECTION = "modules_dict_state_dict"


def load_checkpoint(path: str | Path, what: str) -> Any:
    """`torch.load(weights_only=True)` with every failure (missing, not a checkpoint, truncated,
    a pickle of non-tensor objects) turned into one SPGError naming the file. PyTorch's own
    message is never passed on: it suggests `weights_only=False`, which would run the file's code."""
    path = Path(path)
    if not path.is_file():
        raise SPGError(f"{what} not found", path=str(path), fix="check the path to the official checkpoint")
    if not _looks_like_torch_save(path):
        raise SPGError(
            f"{what} is not a torch checkpoint (neither torch.save's zip nor its legacy pickle format)",
            path=str(path),
            fix="pass the .pth / .pt file the official code wrote (checkpoints/epoch_N.pth, "
            "dead_atom_mask_layer_24.pt)",
        )
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SPGError(
            f"{what} holds objects other than tensors and plain containers, so it is not read "
            "(loading those would run code from the file)",
            path=str(path),
            fix="pass the checkpoint written by the official code, unmodified",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise SPGError(
            f"{what} is truncated or not a torch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            path=str(path),
            fix="copy the file again from the official run's checkpoints/ folder",
        ) from None


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive (PyTorch >= 1.6) or, legacy, a pickle (first byte 0x80)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80"


def checkpoint_epoch(path: str | Path) -> int | None:
    """The `epoch` an official checkpoint records (None when it has none)."""
    ckpt = load_checkpoint(path, "official SAE checkpoint")
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    return int(epoch) if isinstance(epoch, int) else None


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


def official_runs(
    sae_checkpoint: str, guide_checkpoint: str, configs: list[str] | None
) -> tuple[OfficialRun | None, OfficialRun | None]:
    """(SAE run, guide run) configs: the `--official-config` files (told apart by their `mode`),
    else each checkpoint's run folder's `.hydra/config.yaml`."""
    if configs:
        runs = [read_official_config(c) for c in configs]
        by_mode = {("sae" if r.mode == "train_sae" else "guides"): r for r in runs}
        return by_mode.get("sae"), by_mode.get("guides")
    found = [config_beside(sae_checkpoint), config_beside(guide_checkpoint)]
    sae_cfg, guide_cfg = (None if f is None else read_official_config(f) for f in found)
    return sae_cfg, guide_cfg


def import_official(
    *,
    sae_checkpoint: str,
    guide_checkpoint: str,
    out: str,
    backbone: str | None = None,
    dead_mask: str | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    layer: int | None = None,
    k: int | None = None,
    ema: bool = True,
    guide_variant: str | None = None,
    guide_topk: int | None = None,
    official_configs: list[str] | None = None,
    aux: str | None = None,
    target: str | None = None,
    device: str = "auto",
) -> RunDir:
    """Read the official files and their runs' configs (reconcile.py), check them against the
    backbone, and write the run `out`; nothing is written when anything is refused."""
    run = RunDir(out)
    if run.path.exists() and (not run.path.is_dir() or any(p.name != LOCK_FILE for p in run.path.iterdir())):
        raise SPGError(
            "--out must be a new or empty directory",
            path=str(run.path),
            fix="choose another --out; an import never overwrites a run",
        )
    sae_run, guide_run = official_runs(sae_checkpoint, guide_checkpoint, official_configs)
    given = dict(backbone=backbone, image_size=image_size, layer=layer, k=k)
    settled = reconcile({**given, "guide_variant": guide_variant, "guide_topk": guide_topk}, sae_run, guide_run)
    check_same_sae(guide_run, sae_checkpoint, checkpoint_epoch(sae_checkpoint))
    check_dead_mask_run(dead_mask, sae_checkpoint, settled["layer"])
    bb = load_backbone(
        settled["backbone"],
        weights,
        device=device,
        protocol=OFFICIAL,
        image_size=settled["image_size"],
        layer=settled["layer"],
    )
    sae = read_official_sae(sae_checkpoint, bb.dim, settled["k"])
    if settled["width"] is not None and settled["width"] != sae.width:
        raise SPGError(
            f"the SAE checkpoint has {sae.width} atoms but the official config says hidden_dim {settled['width']}",
            path=sae_checkpoint,
            fix="pass the SAE checkpoint of the run whose config was read (or the matching --official-config)",
        )
    if dead_mask is not None:
        sae.dead = read_dead_mask(dead_mask, sae.width)
    theta = read_official_guides(guide_checkpoint, sae.width, ema=ema)
    variant, topk = settled["guide_variant"], settled["guide_topk"]
    pair = GuideSet(sae.width, variant, topk=topk, form="official", dead=sae.dead)
    with torch.no_grad():
        pair.theta.copy_(theta.float())
        pair.theta_ema.copy_(theta.float())

    cfg = RunConfig.from_dict(
        {
            **overrides(OFFICIAL),
            "protocol": OFFICIAL,
            "backbone": settled["backbone"],
            "weights": weights,
            "image_size": bb.image_size,
            "aux": aux or "imported",
            "target": target or RunConfig.target,
            "device": device,
        }
    )
    cfg = replace(
        cfg,
        sae=replace(cfg.sae, width=sae.width, k=settled["k"], **_trained_with(sae_run, "sae")),
        guides=replace(cfg.guides, variant=variant, topk=topk, **_trained_with(guide_run, "guides")),
    )
    sources = {
        name: {"path": str(Path(p).resolve()), "sha256": file_sha256(p)}
        for name, p in (("sae", sae_checkpoint), ("guides", guide_checkpoint), ("dead_mask", dead_mask))
        if p is not None
    }
    extra: dict[str, Any] = {
        "backbone_identity": bb.identity(),
        "imported_from": {
            "code": "riips/SPG",
            **sources,
            "guides_copy": "ema" if ema else "raw",
            "verified": settled["verified"],
            "official_settings": settled["official"],
        },
    }
    if aux:
        extra["aux_store"] = str(extract(aux, bb, ExtractConfig(quiet=True), dtype="float32").root)
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


def _trained_with(official: OfficialRun | None, section: str) -> dict[str, Any]:
    """The settings an official run was trained with, as SAEConfig / GuideConfig fields (those it names)."""
    if official is None:
        return {}
    values = {"epochs": official.epochs, "lr": official.lr, "batch_images": official.batch_size, "seed": official.seed}
    if section == "guides":
        values["ema_decay"] = official.ema_decay
    return {name: v for name, v in values.items() if v is not None}
