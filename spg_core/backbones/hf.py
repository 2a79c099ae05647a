"""DINOv3, DINOv2 and SigLIP vision encoders through `transformers`.

Token choice, studio protocol, the same for every family (OpenCLIP included): the output
of the final transformer block *after* the model's final LayerNorm (`norm` in DINOv3,
`layernorm` in DINOv2, `post_layernorm` in SigLIP, `ln_post` in CLIP). Those
normalised tokens are what each model's own heads consume and what the DINO
papers evaluate as patch features, and the shared normalisation keeps token
scales comparable across families for the SAE.

Official protocol: the tokens the authors' runs saw at block `layer` (24 for ViT-L), taken
explicitly from the block's output (a forward hook), never from `hidden_states`, whose
last entry changed meaning across transformers versions (DINOv3 under 4.56.1: post-norm;
under 5.x: pre-norm):
    DINOv3   block output -> final `norm`   (4.56.1 replaced hidden_states[24] by the normed output)
    DINOv2   block output, no norm          (hidden_states[24] is the raw block output)
    SigLIP   block output -> `post_layernorm` (their encoder applies it); no CLS token
with the CLS token taken the same way and register tokens dropped.

This module also holds the Hugging Face Hub helpers the OpenCLIP adapter reuses:
weights are looked up in the local cache first and the network is only tried
when it is reachable, so a machine without internet fails in seconds with one
`SPGError`, never a minute of retries and an OSError traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from huggingface_hub import constants

from ..errors import SPGError
from .base import Backbone

# Hub and OpenCLIP checkpoint helpers ------------------------------------------------------------

_TRUE = {"1", "on", "yes", "true"}
PROBE_TIMEOUT_S = 3.0


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them only at import)."""
    env = any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to the hub endpoint? Without this, an offline machine spends
    ~25 s in huggingface_hub's retry loop before failing."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # traffic goes through a proxy: a direct probe says nothing, let the download try

    url = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_local_path(weights: str) -> bool:
    """A path rather than a hub id ('org/name'): it exists, or is spelled like a path."""
    if os.path.exists(weights):
        return True
    return (
        weights.startswith(("/", "./", "../", "~", "\\"))
        or weights.count("/") > 1
        or "\\" in weights
        or weights.endswith((".bin", ".pt", ".pth", ".safetensors"))
    )


def canonical_weights(weights: str) -> str:
    """Local paths made absolute, so a backbone's identity does not depend on the working directory."""
    return str(Path(weights).expanduser().resolve()) if looks_like_local_path(weights) else weights


def missing_weights_error(
    backbone: str,
    weights: str,
    reason: str,
    *,
    download: str,
    gated: bool = False,
    path: str | None = None,
    repo: str | None = None,
) -> SPGError:
    """The one error for weights that are not here: what, why, and how to get them.

    `download` is the exact command to fetch them into DIR; `repo` the hub repo
    a cache must hold (default: `weights`).
    """
    repo = repo or weights
    fix = (
        f"on a machine with internet run `{download}` (older huggingface_hub: `huggingface-cli download ...`), "
        f"copy DIR here and pass `--weights DIR`; or set HF_HOME to a Hugging Face cache that holds {repo}."
    )
    if hub_offline():
        fix += " If this machine is online, unset HF_HUB_OFFLINE to download them."
    if gated:
        fix += (
            f" {repo} is gated: accept its licence at https://huggingface.co/{repo} and log in "
            f"(`hf auth login`) before downloading."
        )
    return SPGError(f"cannot load weights '{weights}' for backbone '{backbone}': {reason}", path=path, fix=fix)


def local_path_error(backbone: str, weights: str, what: str) -> SPGError:
    """`weights` is spelled like a local path but is not usable."""
    return SPGError(
        f"weights for backbone '{backbone}' not found: {what}",
        path=weights,
        fix="check the path, or pass a hub id / leave --weights unset for the default weights",
    )


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# Families -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HFFamily:
    """How to build one transformers vision encoder: classes, released and tiny configs."""

    model_class: str  # transformers class name, imported lazily
    config_class: str
    full_config: dict[str, Any]  # the released checkpoint's architecture (-random)
    tiny_config: dict[str, Any]  # same class, toy sizes (-tiny)
    tiny_image_size: int  # S for -tiny
    forward_kwargs: dict[str, Any] = field(default_factory=dict)


TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)

FAMILIES: dict[str, HFFamily] = {
    # DINOv3 ViT-L/16 uses RoPE (no learned position table), so any S works; 4 register tokens.
    "hf-dinov3": HFFamily(
        "DINOv3ViTModel",
        "DINOv3ViTConfig",
        full_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            patch_size=16,
            num_register_tokens=4,
            image_size=224,
            use_gated_mlp=False,
            layer_norm_eps=1e-5,
            rope_theta=100.0,
        ),
        tiny_config=dict(TINY, intermediate_size=64, patch_size=16, num_register_tokens=4, image_size=64),
        tiny_image_size=64,
    ),
    # DINOv2-large learned positions for 518 (37x37); HF interpolates them bicubically to the input
    # grid (`size=(h, w)`, so 448 gives exactly 32x32). The tiny config mirrors this: 5x5 table, 4x4 input.
    "hf-dinov2": HFFamily(
        "Dinov2Model",
        "Dinov2Config",
        full_config=dict(
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            mlp_ratio=4,
            patch_size=14,
            image_size=518,
            layer_norm_eps=1e-6,
        ),
        tiny_config=dict(TINY, mlp_ratio=2, patch_size=14, image_size=70),
        tiny_image_size=56,
    ),
    # SigLIP has no CLS token (it pools with an attention head, which we bypass); 384 is its native size,
    # interpolate_pos_encoding only matters if S is changed.
    "hf-siglip": HFFamily(
        "SiglipVisionModel",
        "SiglipVisionConfig",
        full_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            patch_size=16,
            image_size=384,
            layer_norm_eps=1e-6,
        ),
        tiny_config=dict(TINY, intermediate_size=64, patch_size=16, image_size=64),
        tiny_image_size=64,
        forward_kwargs=dict(interpolate_pos_encoding=True),
    ),
}


def prefix_token_count(family: str, config: Any) -> int:
    """Tokens before the patch tokens in the sequence: CLS (+ registers)."""
    if family == "hf-dinov3":
        return 1 + int(config.num_register_tokens)
    if family == "hf-dinov2":
        return 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    if family == "hf-siglip":
        return 0
    raise AssertionError(f"unknown HF family {family!r}")


# The adapter --------------------------------------------------------------------------------------


# Official protocol: apply the final norm to the block output? (see the module docstring)
OFFICIAL_POST_NORM = {"hf-dinov3": True, "hf-dinov2": False, "hf-siglip": True}
_BLOCK_LISTS = ("model.layer", "layer", "encoder.layer", "encoder.layers", "vision_model.encoder.layers")
_FINAL_NORMS = ("norm", "layernorm", "post_layernorm", "vision_model.post_layernorm")
# config.model_type prefixes each family accepts from --weights (any size of the architecture)
_MODEL_TYPES = {"hf-dinov3": ("dinov3",), "hf-dinov2": ("dinov2",), "hf-siglip": ("siglip",)}


def _submodule(model: torch.nn.Module, names: tuple[str, ...], what: str) -> torch.nn.Module:
    for name in names:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    raise AssertionError(f"{type(model).__name__} has none of {names} ({what}); token extraction would differ")


class HFBackbone(Backbone):
    """A transformers vision model returning patch tokens `[B, h*w, D]` (+ CLS `[B, D]`)."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str,
        family: str,
        weights: str,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        forward_kwargs: dict[str, Any] | None = None,
        token_mode: str = "studio",
        layer: int | None = None,
    ):
        super().__init__()
        config = model.config
        self.model = model
        self.family = family
        self.name = name
        self.weights = weights
        self.image_size = image_size
        self.patch_size = _as_int(config.patch_size)
        self.dim = int(config.hidden_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.num_prefix_tokens = prefix_token_count(family, config)
        self.forward_kwargs = dict(forward_kwargs or {})
        self.has_cls = family != "hf-siglip"
        self.token_mode = token_mode
        depth = int(config.num_hidden_layers)
        if token_mode == "official":
            self.layer = depth if layer is None or layer == -1 else int(layer)
            if not 1 <= self.layer <= depth:
                raise SPGError(
                    f"{name} has {depth} blocks; --layer {self.layer} is out of range",
                    fix=f"pass --layer between 1 and {depth} (default: the last block)",
                )
            self.blocks = _submodule(model, _BLOCK_LISTS, "transformer blocks")
            self.final_norm = _submodule(model, _FINAL_NORMS, "final norm") if OFFICIAL_POST_NORM[family] else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] RGB in [0, 1] -> [B, h*w, D] patch tokens."""
        return self.forward_with_cls(images)[0]

    def forward_with_cls(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, 3, S, S] -> (patch tokens [B, h*w, D], CLS [B, D] or None), per `token_mode`."""
        if self.token_mode == "official":
            tokens = self._block_output(images)
            if self.final_norm is not None:
                tokens = self.final_norm(tokens)
        else:
            out = self.model(pixel_values=self.normalise(images), **self.forward_kwargs)
            tokens = out.last_hidden_state  # [B, prefix + h*w, D], after the final LayerNorm
        patches = tokens[:, self.num_prefix_tokens :]
        if patches.shape[1] != self.num_patches:  # guards a wrong prefix count, which would shift the grid
            raise RuntimeError(f"{self.name}: expected {self.num_patches} patch tokens, got {patches.shape[1]}")
        return patches, tokens[:, 0] if self.has_cls else None

    def _block_output(self, images: torch.Tensor) -> torch.Tensor:
        """The raw output `[B, prefix + h*w, D]` of block `layer` (1-based), caught by a forward hook."""
        caught: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            caught.append(output[0] if isinstance(output, (tuple, list)) else output)

        handle = self.blocks[self.layer - 1].register_forward_hook(hook)
        try:
            self.model(pixel_values=self.normalise(images), **self.forward_kwargs)
        finally:
            handle.remove()
        return caught[0]


def load_hf_backbone(
    spec: Any,
    variant: str | None,
    weights: str | None,
    device: torch.device,
    *,
    token_mode: str = "studio",
    image_size: int | None = None,
    layer: int | None = None,
) -> HFBackbone:
    """Build `spec` (a BackboneSpec of an hf-* family): released weights, or a -tiny / -random variant.

    `token_mode` "official" takes block `layer`'s tokens (default: the last block) as the
    official code did; `image_size` overrides the registry's S (not for -tiny)."""
    family = FAMILIES[spec.family]
    requested_size = image_size
    if variant is None:
        source = canonical_weights(weights or spec.weights)
        _check_local_model_type(spec, source)
        model = _from_pretrained(family, spec, source)
        _check_architecture(model, spec, source)
        name, image_size = spec.name, requested_size or spec.image_size
    else:
        config_kwargs = family.tiny_config if variant == "tiny" else family.full_config
        model = _from_config(family, config_kwargs, device)
        source = "random-tiny" if variant == "tiny" else "random"
        name = f"{spec.name}-{variant}"
        image_size = family.tiny_image_size if variant == "tiny" else (requested_size or spec.image_size)
    return HFBackbone(
        model.to(device),
        name=name,
        family=spec.family,
        weights=source,
        image_size=image_size,
        mean=spec.mean,
        std=spec.std,
        forward_kwargs=family.forward_kwargs,
        token_mode=token_mode,
        layer=layer,
    )


def _from_config(family: HFFamily, config_kwargs: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """Random-initialised model, built directly on `device` (no CPU init + copy; 'meta' allocates nothing)."""
    import transformers  # noqa: PLC0415 -- heavy (seconds): loaded with HF backbones only

    config = getattr(transformers, family.config_class)(**config_kwargs)
    with torch.device(device):
        return getattr(transformers, family.model_class)._from_config(
            config, attn_implementation="sdpa", dtype=torch.float32
        )


def _from_pretrained(family: HFFamily, spec: Any, source: str) -> torch.nn.Module:
    """Weights from a local directory, the HF cache, or (when reachable and allowed) the hub."""
    import transformers  # noqa: PLC0415 -- heavy (seconds): loaded with HF backbones only

    cls = getattr(transformers, family.model_class)
    # transformers >= 5 defaults to dtype="auto" (the checkpoint's dtype): ask for fp32 explicitly;
    # `Backbone.extract` autocasts to bf16 on CUDA.
    kwargs = dict(attn_implementation="sdpa", dtype=torch.float32)
    local = looks_like_local_path(source)
    download = f"hf download {spec.weights if local else source} --local-dir DIR"
    if local:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise local_path_error(
                spec.name,
                source,
                "no such directory"
                if not path.exists()
                else "expected a `from_pretrained` directory (config.json + weights)",
            )
        if not (path / "config.json").is_file():
            raise local_path_error(spec.name, source, "the directory has no config.json")
        with _quiet_hub_errors(spec.name, source, download, spec.gated, path=str(path), repo=spec.weights):
            return cls.from_pretrained(str(path), local_files_only=True, **kwargs)
    with contextlib.suppress(OSError):  # cache hit: no network at all
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    if hub_offline():
        raise missing_weights_error(
            spec.name,
            source,
            "not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
            download=download,
            gated=spec.gated,
        )
    if not hub_reachable():
        raise missing_weights_error(
            spec.name,
            source,
            "not in the local Hugging Face cache and the hub is not reachable (no internet?)",
            download=download,
            gated=spec.gated,
        )
    with _quiet_hub_errors(spec.name, source, download, spec.gated):
        return cls.from_pretrained(source, **kwargs)


@contextlib.contextmanager
def _quiet_hub_errors(
    backbone: str, weights: str, download: str, gated: bool, path: str | None = None, repo: str | None = None
) -> Iterator[None]:
    """Turn download/loading failures (OSError, HTTP errors, bad files) into one SPGError."""
    try:
        yield
    except SPGError:
        raise
    except Exception as exc:  # transformers/huggingface_hub raise many types here; all mean "no usable weights"
        raise missing_weights_error(
            backbone, weights, first_line(exc), download=download, gated=gated, path=path, repo=repo
        ) from exc


def _check_architecture(model: torch.nn.Module, spec: Any, source: str) -> None:
    """Any size of the family's architecture is accepted (D, patch size and depth come from the
    checkpoint's config); weights of another architecture are refused."""
    model_type = str(getattr(model.config, "model_type", ""))
    if not model_type.startswith(_MODEL_TYPES[spec.family]):
        raise SPGError(
            f"weights '{source}' are a '{model_type}' model, not a {spec.family[3:]} one",
            fix=f"pass {spec.family[3:]} weights (any size), e.g. {spec.weights}",
        )


def _check_local_model_type(spec: Any, source: str) -> None:
    """A local directory's config.json must name the family's architecture: transformers would
    otherwise load another model's weights into this class, re-initialising what does not fit."""
    config = Path(source).expanduser() / "config.json"
    if not config.is_file():
        return  # a hub id, or a directory _from_pretrained reports on

    try:
        model_type = str(json.loads(config.read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return  # unreadable: _from_pretrained raises the clear error
    if not model_type.startswith(_MODEL_TYPES[spec.family]):
        raise SPGError(
            f"weights '{source}' are a '{model_type}' model, not a {spec.family[3:]} one",
            path=str(config),
            fix=f"pass {spec.family[3:]} weights (any size), e.g. {spec.weights}",
        )


def _as_int(size: int | tuple[int, ...] | list[int]) -> int:
    """Configs may hold a patch size as int or (h, w); SPG uses square patches."""
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)
