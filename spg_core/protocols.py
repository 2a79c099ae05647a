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

A protocol is a partial RunConfig dict (`overrides`) applied on top of the dataclass
defaults; explicit command-line options are applied on top of the protocol.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import SPGError

OFFICIAL = "official"
STUDIO = "studio"
PROTOCOLS = (OFFICIAL, STUDIO)

# Backbone families the paper used: `official` is their default protocol.
PAPER_FAMILIES = ("hf-dinov3", "hf-dinov2", "hf-siglip", "openclip")

# Image side S the official runs fed each family (scripts/run.sh, configs/model/*.yaml).
OFFICIAL_IMAGE_SIZE = {"hf-dinov3": 448, "hf-dinov2": 448, "hf-siglip": 448, "openclip": 518}

_OVERRIDES: dict[str, dict[str, Any]] = {
    OFFICIAL: {
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
    },
    STUDIO: {},
}


def check_protocol(name: str) -> str:
    """`name` if it is a protocol, else a clear SPGError."""
    if name not in PROTOCOLS:
        raise SPGError(f"unknown protocol {name!r}", fix=f"use one of {', '.join(PROTOCOLS)}")
    return name


def default_protocol(family: str) -> str:
    """`official` for the paper backbones' families (`BackboneSpec.family`), else `studio`."""
    return OFFICIAL if family in PAPER_FAMILIES else STUDIO


def overrides(name: str) -> dict[str, Any]:
    """The protocol's partial RunConfig dict (`sae`, `guides`, `score` sections); a deep copy."""
    return copy.deepcopy(_OVERRIDES[check_protocol(name)])


def image_size(name: str, family: str) -> int | None:
    """S the protocol feeds a backbone family; None = the registry's own size."""
    return OFFICIAL_IMAGE_SIZE.get(family) if check_protocol(name) == OFFICIAL else None


def run_protocol(config: dict[str, Any]) -> str:
    """The protocol a stored run was made with; runs older than protocols are studio runs."""
    return str(config.get("protocol", STUDIO))
