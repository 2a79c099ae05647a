"""What an import uses: the options given, checked against the official runs' own configs.

Each setting comes from the command line when given, else from the official configs, else
the official protocol's default. A given value that contradicts a config, two configs that
contradict each other, a guide run that loaded another SAE run or epoch, and a dead mask of
another SAE run are refused (SPGError), before anything is written.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..backbones import parse_backbone_name
from ..errors import SPGError
from .hydra_config import OfficialRun, backbone_of

# setting -> (the official run field, the import-official option)
_CHECKED = {
    "image_size": ("image_size", "--image-size"),
    "layer": ("layer", "--layer"),
    "k": ("k", "--k"),
    "width": ("width", "the SAE checkpoint's width"),
}
_DEFAULTS = {"k": 32, "guide_variant": "relu_l1", "guide_topk": 32}


def reconcile(given: dict[str, Any], sae_run: OfficialRun | None, guide_run: OfficialRun | None) -> dict[str, Any]:
    """`given` (backbone, image_size, layer, k, guide_variant, guide_topk, width; None = not
    given) -> the settings to import, with `verified` (a config was read) and `official`
    (each config's values, for config.json)."""
    runs = [r for r in (sae_run, guide_run) if r is not None]
    out = dict(given)
    out["backbone"] = _backbone(given.get("backbone"), runs)
    for name, (attr, option) in _CHECKED.items():
        out[name] = _agreed(name, option, given.get(name), [(r, getattr(r, attr)) for r in runs])
    if guide_run is not None:
        for name in ("guide_variant", "guide_topk"):
            out[name] = _agreed(
                name, f"--{name.replace('_', '-')}", given.get(name), [(guide_run, getattr(guide_run, name))]
            )
    for name, default in _DEFAULTS.items():
        out[name] = default if out.get(name) is None else out[name]
    out["verified"] = bool(runs)
    out["official"] = {r.mode or "run": asdict(r) for r in runs}
    return out


def check_same_sae(guide_run: OfficialRun | None, sae_checkpoint: str, sae_epoch: int | None) -> None:
    """The guide run must have loaded this SAE checkpoint: its epoch and, in the official
    layout (outputs/DATE/TIME_.../checkpoints/), its run folder."""
    if guide_run is None:
        return
    if guide_run.sae_epoch is not None and sae_epoch is not None and guide_run.sae_epoch != sae_epoch:
        raise SPGError(
            f"the guides were trained on the SAE's epoch {guide_run.sae_epoch} (checkpoint_epoch in "
            f"{guide_run.path}), but the SAE checkpoint is epoch {sae_epoch}",
            path=sae_checkpoint,
            fix=f"pass the SAE run's checkpoints/epoch_{guide_run.sae_epoch}.pth",
        )
    run_dir = Path(sae_checkpoint).resolve().parent.parent
    if guide_run.sae_datetime and Path(sae_checkpoint).resolve().parent.name == "checkpoints":
        date, _, time = guide_run.sae_datetime.partition("/")
        if not (run_dir.parent.name == date and run_dir.name.startswith(time)):
            raise SPGError(
                f"the guides were trained on the SAE run {guide_run.sae_datetime} (guide_sae.datetime in "
                f"{guide_run.path}), but the SAE checkpoint is from {run_dir.parent.name}/{run_dir.name}",
                path=sae_checkpoint,
                fix="pass the SAE checkpoint of the run the guides loaded",
            )


def check_dead_mask_run(dead_mask: str | None, sae_checkpoint: str, layer: int | None) -> None:
    """The dead mask must come from the SAE's own run folder and the imported layer."""
    if dead_mask is None:
        return
    mask, sae = Path(dead_mask).resolve(), Path(sae_checkpoint).resolve()
    if mask.parent.name == sae.parent.name == "checkpoints" and mask.parent != sae.parent:
        raise SPGError(
            f"the dead-atom mask is from the run {mask.parent.parent.name}, the SAE from {sae.parent.parent.name}",
            path=str(mask),
            fix=f"pass {sae.parent / mask.name} (the mask the SAE run wrote)",
        )
    stem = mask.stem
    if layer is not None and stem.startswith("dead_atom_mask_layer_") and stem.rsplit("_", 1)[-1] != str(layer):
        raise SPGError(
            f"the dead-atom mask is for layer {stem.rsplit('_', 1)[-1]}, the import for layer {layer}",
            path=str(mask),
            fix=f"pass dead_atom_mask_layer_{layer}.pt",
        )


def _backbone(given: str | None, runs: list[OfficialRun]) -> str:
    named = {r.path: (backbone_of(r), r.model_id) for r in runs if r.model_id}
    official = {name for name, _ in named.values() if name}
    if len({mid for _, mid in named.values()}) > 1:
        raise SPGError(
            "the official SAE and guide runs used different backbones: "
            + ", ".join(f"{mid} ({p})" for p, (_, mid) in named.items()),
            fix="pass the SAE and guide checkpoints of one experiment",
        )
    if given is None:
        if official:
            return official.pop()
        ids = ", ".join(mid for _, mid in named.values()) or "no model.id"
        raise SPGError(
            f"--backbone is needed: the official config names {ids}, which is not a registry backbone"
            if named
            else "--backbone is needed: no official config was found to read it from",
            fix="pass --backbone (and --weights for a model that is not the registry's)",
        )
    spec, _ = parse_backbone_name(given)
    for path, (name, mid) in named.items():
        if name is not None and name != spec.name:
            raise SPGError(
                f"--backbone {given} contradicts the official run's model.id {mid} ({name})",
                path=path,
                fix=f"pass --backbone {name}, or the checkpoints of a {spec.name} run",
            )
        if name is None and spec.family.removeprefix("hf-").split("-")[0] not in (mid or "").lower():
            raise SPGError(
                f"--backbone {given} ({spec.family}) does not match the official run's model.id {mid}",
                path=path,
                fix="pass the backbone family the official run used",
            )
    return given


def _agreed(name: str, option: str, given: Any, said: list[tuple[OfficialRun, Any]]) -> Any:
    """One setting: the configs must agree with each other and with `given`."""
    known = [(r, v) for r, v in said if v is not None]
    if len({v for _, v in known}) > 1:
        raise SPGError(
            f"the official runs disagree on {name}: " + ", ".join(f"{v} ({r.path})" for r, v in known),
            fix="pass the SAE and guide checkpoints of one experiment",
        )
    if given is not None and known and known[0][1] != given:
        run, value = known[0]
        raise SPGError(
            f"{option} {given} contradicts the official run's {name} {value}",
            path=run.path,
            fix=f"drop {option} (the config's {value} is used), or pass the checkpoints of the run you mean",
        )
    return given if given is not None else (known[0][1] if known else None)
