"""OpenCLIP ViT-L-14-336 vision tower (OpenAI weights), run at 518 x 518.

The tower was trained at 336 (24x24 patches of 14). SPG runs it at 518 (37x37),
so its learned position table is interpolated bicubically once at load time,
the way open_clip's own `resize_pos_embed` does it (what `force_image_size`
would give). Tokens are the final block's patch tokens after `ln_post`, before
the linear `proj` into the joint image-text space: width 1024, not 768.
See hf.py for why every family returns post-final-LayerNorm tokens.

Official protocol (riips/SPG `src/encoders/CLIP/model.py`): block `layer`'s output through
`ln_post` and then `proj`, CLS included, so tokens are `proj`'s width (768 for ViT-L/14),
not the transformer's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from torch import nn

from ..errors import SPGError
from .base import Backbone
from .hf import (
    canonical_weights,
    first_line,
    hub_offline,
    hub_reachable,
    local_path_error,
    looks_like_local_path,
    missing_weights_error,
)

MODEL_NAME = "ViT-L-14-336"
# OpenAI CLIP was trained with QuickGELU; open_clip's plain `ViT-L-14-336` config uses nn.GELU, so
# loading the `openai` weights without forcing QuickGELU silently changes every activation.
QUICK_GELU = True
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")

# -tiny: same VisionTransformer class and forward; 4x4 learned table (56 px) run at 84 px (6x6),
# mirroring the upsampling 24x24 -> 37x37 of the real model.
TINY_VISION_CFG = dict(image_size=56, layers=2, width=32, head_width=16, patch_size=14)
TINY_EMBED_DIM = 16
TINY_IMAGE_SIZE = 84


class OpenCLIPBackbone(Backbone):
    """An open_clip `VisionTransformer` returning final-block patch tokens `[B, h*w, width]`."""

    def __init__(
        self,
        visual: nn.Module,
        *,
        name: str,
        weights: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        token_mode: str = "studio",
        layer: int | None = None,
    ):
        super().__init__()
        _check_token_path(visual)
        visual.output_tokens = True  # forward returns (pooled, tokens); tokens = ln_post(x)[:, 1:]
        self.visual = visual
        self.name = name
        self.weights = weights
        self.image_size = int(visual.image_size[0])
        self.patch_size = int(visual.patch_size[0])
        self.dim = int(visual.conv1.out_channels)  # transformer width, i.e. tokens before `proj`
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.num_prefix_tokens = 1  # the class token; CLIP has no registers
        self.token_mode = token_mode
        self.has_cls = token_mode == "official"
        if token_mode == "official":
            depth = len(visual.transformer.resblocks)
            self.layer = depth if layer is None or layer == -1 else int(layer)
            if not 1 <= self.layer <= depth:
                raise SPGError(
                    f"{name} has {depth} blocks; --layer {self.layer} is out of range",
                    fix=f"pass --layer between 1 and {depth} (default: the last block)",
                )
            self.dim = int(visual.proj.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] RGB in [0, 1] -> [B, h*w, D] patch tokens."""
        return self.forward_with_cls(images)[0]

    def forward_with_cls(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[B, 3, S, S] -> (patch tokens [B, h*w, D], CLS [B, D] or None).

        Studio: post `ln_post`, pre `proj`, no CLS (studio guides do not use it, and the tower's
        pooled output is projected to another width). Official: see the module docstring."""
        if self.token_mode != "official":
            _, tokens = self.visual(self.normalise(images))
            return tokens, None
        x = self.visual.ln_post(self._block_output(images)) @ self.visual.proj
        return x[:, 1:], x[:, 0]

    def _block_output(self, images: torch.Tensor) -> torch.Tensor:
        """The raw output `[B, 1 + h*w, width]` of block `layer` (1-based), caught by a forward hook."""
        caught: list[torch.Tensor] = []
        handle = self.visual.transformer.resblocks[self.layer - 1].register_forward_hook(
            lambda _m, _i, out: caught.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            self.visual(self.normalise(images))
        finally:
            handle.remove()
        x = caught[0]
        return x if getattr(self.visual.transformer, "batch_first", True) else x.permute(1, 0, 2)


def _check_token_path(visual: nn.Module) -> None:
    """`VisionTransformer._pool` only yields ln_post(all tokens)[:, 1:] for this configuration."""
    ok = (
        getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", None) == "tok"
        and not getattr(visual, "final_ln_after_pool", True)
    )
    if not ok:
        raise AssertionError("open_clip vision tower is not a plain CLS-pooled ViT; token extraction would differ")


def load_openclip_backbone(
    spec: Any,
    variant: str | None,
    weights: str | None,
    device: torch.device,
    *,
    token_mode: str = "studio",
    image_size: int | None = None,
    layer: int | None = None,
) -> OpenCLIPBackbone:
    """Build `spec` (family "openclip"): released weights, or a -tiny / -random variant.
    `token_mode`, `layer`: see the module docstring; `image_size` overrides S (not for -tiny)."""
    if variant == "tiny":
        visual = _build_visual(TINY_VISION_CFG, TINY_EMBED_DIM, device)
        image_size, name, source = TINY_IMAGE_SIZE, f"{spec.name}-tiny", "random-tiny"
    elif variant == "random":
        import open_clip  # noqa: PLC0415 -- heavy: loaded with OpenCLIP backbones only

        cfg = open_clip.get_model_config(MODEL_NAME)
        visual = _build_visual(cfg["vision_cfg"], cfg["embed_dim"], device)
        image_size, name, source = image_size or spec.image_size, f"{spec.name}-random", "random"
    else:
        source = canonical_weights(weights or spec.weights)
        visual = _load_pretrained_visual(spec.name, source)
        image_size, name = image_size or spec.image_size, spec.name
    resize_visual(visual, image_size)
    return OpenCLIPBackbone(
        visual, name=name, weights=source, mean=spec.mean, std=spec.std, token_mode=token_mode, layer=layer
    )


def _build_visual(vision_cfg: dict[str, Any], embed_dim: int, device: torch.device) -> nn.Module:
    """Random-initialised vision tower through open_clip's own builder (the one `CLIP` uses)."""
    from open_clip.model import _build_vision_tower  # noqa: PLC0415 -- heavy, as above; private but stable since open_clip 2.x

    with torch.device(device):
        return _build_vision_tower(embed_dim, dict(vision_cfg), quick_gelu=QUICK_GELU)


def resize_visual(visual: nn.Module, image_size: int) -> None:
    """Make `visual` run at `image_size`: interpolate its position table, update its sizes."""
    patch = int(visual.patch_size[0])
    if image_size % patch:
        raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}")
    grid = (image_size // patch, image_size // patch)
    if tuple(visual.grid_size) != grid:
        new = interpolate_pos_embed(visual.positional_embedding.detach(), grid)
        visual.positional_embedding = nn.Parameter(new, requires_grad=False)
    visual.grid_size = grid
    visual.image_size = (image_size, image_size)


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """[prefix + n*n, D] -> [prefix + h*w, D]: bicubic over the square patch grid, prefix rows kept.

    Same settings as open_clip's `resize_pos_embed` (bicubic, align_corners=False,
    antialias=True), computed in float32.
    """
    prefix, table = pos_embed[:num_prefix], pos_embed[num_prefix:]
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise ValueError(f"position table of {table.shape[0]} rows is not a square grid")
    image = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False, antialias=True)
    table = image.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([prefix, table], dim=0)


# Released weights ---------------------------------------------------------------------------------


def _load_pretrained_visual(backbone: str, source: str) -> nn.Module:
    """`source`: an open_clip pretrained tag, a checkpoint file, or a directory holding one."""
    checkpoint = _resolve_checkpoint(backbone, source)
    import open_clip  # noqa: PLC0415 -- heavy: loaded with OpenCLIP backbones only

    try:
        model = open_clip.create_model(
            MODEL_NAME, pretrained=str(checkpoint), force_quick_gelu=QUICK_GELU, device="cpu", precision="fp32"
        )
    except Exception as exc:  # unreadable file, or a checkpoint of another architecture (strict load)
        raise SPGError(
            f"cannot load '{checkpoint}' into {MODEL_NAME} for backbone '{backbone}': {first_line(exc)}",
            path=str(checkpoint),
            fix=f"pass an open_clip {MODEL_NAME} checkpoint, e.g. open_clip_pytorch_model.bin from "
            f"timm/vit_large_patch14_clip_336.openai (OpenAI's own TorchScript .pt archive cannot be "
            f"loaded with torch.load(weights_only=True))",
        ) from exc
    return model.visual  # the text tower is dropped with `model`


def _resolve_checkpoint(backbone: str, source: str) -> Path:
    """A local checkpoint file for `source`, from disk, the HF cache, or a download."""
    import open_clip  # noqa: PLC0415 -- heavy: loaded with OpenCLIP backbones only

    tag_cfg = open_clip.get_pretrained_cfg(MODEL_NAME, source) if not looks_like_local_path(source) else {}
    if tag_cfg:
        return _checkpoint_for_tag(backbone, source, tag_cfg)
    path = Path(source).expanduser()
    if path.is_dir():
        found = [path / n for n in CHECKPOINT_NAMES if (path / n).is_file()]
        if not found:
            raise local_path_error(backbone, source, f"the directory holds none of {', '.join(CHECKPOINT_NAMES)}")
        return found[0]
    if path.is_file():
        return path
    known = ", ".join(open_clip.list_pretrained_tags_by_model(MODEL_NAME))
    raise local_path_error(
        backbone, source, f"no such file or directory, and not an open_clip pretrained tag of {MODEL_NAME} ({known})"
    )


def _checkpoint_for_tag(backbone: str, tag: str, cfg: dict[str, Any]) -> Path:
    """Cache first; the network only when allowed and reachable (see hf.hub_reachable)."""
    repo = cfg.get("hf_hub", "").rstrip("/")
    if not repo:  # every ViT-L-14-336 tag has a hub mirror; a URL-only tag would need open_clip's downloader
        raise SPGError(f"open_clip tag '{tag}' has no Hugging Face mirror", fix="pass a local checkpoint file")
    download = f"hf download {repo} {CHECKPOINT_NAMES[1]} --local-dir DIR"
    for name in CHECKPOINT_NAMES[:2]:
        try:
            return Path(hf_hub_download(repo, name, local_files_only=True))
        except Exception:  # not cached under this file name
            continue
    why = f"open_clip tag '{tag}' ({repo}) is not in the local Hugging Face cache and "
    if hub_offline():
        raise missing_weights_error(backbone, tag, why + "HF_HUB_OFFLINE is set", download=download, repo=repo)
    if not hub_reachable():
        raise missing_weights_error(
            backbone, tag, why + "the hub is not reachable (no internet?)", download=download, repo=repo
        )
    error: Exception | None = None
    for name in CHECKPOINT_NAMES[:2]:
        try:
            return Path(hf_hub_download(repo, name))
        except Exception as exc:  # try the next file name; report the last failure
            error = exc
    raise missing_weights_error(
        backbone, tag, f"download from {repo} failed: {first_line(error)}", download=download, repo=repo
    ) from error
