"""Named protocols: the settings a run is made with, as one recorded name.

    official   what the SPG authors' code (riips/SPG, commit 864fca7) computes, step for
               step (docs/SPG_METHOD.md): tokens as their runs saw them, a bias-free
               SAE with AuxK and a dead-atom mask, four guides, sigma-4 maps scored by
               their max. Default for the four paper backbones.
    studio     this project's own settings, written from the paper before the code was
               public (biased SAE, a normal/anomaly guide pair, unsmoothed maps). Default
               for the builtin and other weight-free or CNN backbones, whose small
               tokens the official sizes do not suit. Runs made before protocols existed
               have no `protocol` key in config.json and are studio runs.

A preset is a named partial RunConfig dict applied on top of the dataclass defaults, with
the protocol it runs under: one per protocol (`official`, `studio`), and one per weight-free
or CPU backbone family, sized for it (`builtin`, `effnet`). `spg run --preset NAME` picks one;
left out, the backbone's family picks it (`default_preset`), and explicit command-line options
are applied on top of the preset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from .errors import SPGError

OFFICIAL = "official"
STUDIO = "studio"
PROTOCOLS = (OFFICIAL, STUDIO)

# Backbone families the paper used: `official` is their default protocol.
PAPER_FAMILIES = ("hf-dinov3", "hf-dinov2", "hf-siglip", "openclip")

# Image side S the official runs fed each family (scripts/run.sh, configs/model/*.yaml).
OFFICIAL_IMAGE_SIZE = {"hf-dinov3": 448, "hf-dinov2": 448, "hf-siglip": 448, "openclip": 518}

_OFFICIAL_OVERRIDES: dict[str, Any] = {
    # configs/experiment/guide_sae.yaml, configs/mode/train_sae.yaml, scripts/run.sh
    "sae": {
        "width": 4096,
        "k": 32,
        "lr": 1e-3,
        "batch_images": 16,
        "epochs": 50,
        "seed": 111,
        "bias": False,
        "adam_betas": (0.5, 0.999),
        "auxk": 512,
        "auxk_coef": 1 / 32,
        "auxk_dead_tokens": 10_000_000,
        "auxk_threshold": 1e-3,
    },
    # src/pipelines/guide_sae_pipeline.py, configs/mode/train.yaml, scripts/run.sh
    "guides": {
        "form": "official",
        "variant": "relu_l1",
        "l1": 1e-3,
        "topk": 32,
        "tau": 0.07,
        "focal_gamma": 2.0,
        "dice": "image",
        "ema_decay": 0.999,
        "lr": 0.01,
        "adam_betas": (0.5, 0.999),
        "batch_images": 8,
        "epochs": 15,
        "init_scale": 0.1,
        "seed": 111,
    },
    # scripts/run.sh (evaluate.image_score.mode=map, map_pool=max), configs/mode/eval.yaml
    "score": {"aggregation": "max", "smoothing_sigma": 4.0, "image_score": "smoothed_map"},
}


@dataclass(frozen=True)
class Preset:
    """A named partial RunConfig: the protocol it runs under and the settings it changes
    ({section: {field: value}}, applied on top of the dataclass defaults)."""

    name: str
    protocol: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(OFFICIAL, OFFICIAL, "the authors' code, step for step", _OFFICIAL_OVERRIDES),
        Preset(STUDIO, STUDIO, "this project's settings at the paper's sizes (M 4096, 50 SAE epochs)"),
        # builtin is frozen: docs/builtin_lab_notes.md has how these values were reached, and their figures.
        Preset(
            "builtin",
            STUDIO,
            "sized for the weight-free builtin backbone on a CPU (the demo's)",
            {"sae": {"width": 512, "k": 16, "epochs": 10}, "guides": {"epochs": 60, "lr": 3e-3}},
        ),
        # Chosen for effnet-lite0 by `spg select` on the auxiliary side only (docs/effnet.md: grid,
        # folds, table); Lite1 / Lite2 take it too (same token layout, a little wider).
        Preset(
            "effnet",
            STUDIO,
            "sized for the EfficientNet-Lite backbones on a CPU (docs/effnet.md)",
            {"sae": {"width": 512, "k": 32, "epochs": 10}, "guides": {"epochs": 30, "lr": 3e-3}},
        ),
    )
}

# The preset a backbone family takes when none is named: the paper families run the authors' code.
FAMILY_PRESETS = {**dict.fromkeys(PAPER_FAMILIES, OFFICIAL), "builtin": "builtin", "effnet": "effnet"}


def check_protocol(name: str) -> str:
    """`name` if it is a protocol, else a clear SPGError."""
    if name not in PROTOCOLS:
        raise SPGError(f"unknown protocol {name!r}", fix=f"use one of {', '.join(PROTOCOLS)}")
    return name


def default_preset(family: str) -> str:
    """The preset of a backbone family (`BackboneSpec.family`) when none is named: FAMILY_PRESETS, else `studio`."""
    return FAMILY_PRESETS.get(family, STUDIO)


def check_preset(name: str) -> Preset:
    """Preset `name`, or a clear SPGError."""
    if name not in PRESETS:
        raise SPGError(f"unknown preset {name!r}", fix=f"use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def overrides(name: str) -> dict[str, Any]:
    """Preset `name`'s partial RunConfig dict (`sae`, `guides`, `score` sections); a deep copy.
    A protocol's name is also its preset's."""
    return copy.deepcopy(check_preset(name).overrides)


def image_size(name: str, family: str) -> int | None:
    """S the protocol feeds a backbone family; None = the registry's own size."""
    return OFFICIAL_IMAGE_SIZE.get(family) if check_protocol(name) == OFFICIAL else None
