"""Pixels as each backbone family's own image processor makes them (resize, rescale, normalise).

The official code (riips/SPG) hands each decoded image to the model's `AutoImageProcessor`
under transformers 4.56.1, with `size = crop_size = S x S` (so the processors' centre crop
is the identity), and OpenCLIP images to torchvision transforms on the PIL image. Three
pixel pipelines follow from that, all reproduced here:

    "pil"          PIL resize of the 8-bit RGB image, then rescale and normalise in float.
                   4.56.1's slow processors (DINOv2's BitImageProcessor, SigLIP's, CLIP's),
                   5.x's `backend="pil"` processors, and open_clip's `Resize` on PIL images.
    "torch-float"  rescale to float first, then torchvision's antialiased resize of the
                   float image, then normalise: DINOv3's processor (only a fast one exists;
                   its `_preprocess` reorders rescale before resize).
    "torch-uint8"  torchvision's antialiased resize of the uint8 image, then rescale and
                   normalise: the other fast processors, used when a weights directory's
                   `preprocessor_config.json` names a `...Fast` processor type.

transformers 5.x made the torchvision pipeline the default for every family; for DINOv2,
SigLIP and CLIP it differs from the pinned 4.56.1 by up to one grey level, so a saved slow
processor type is read as "pil", as 4.56.1 does.

The file -> RGB decode stays `images.to_rgb` (one rule for every backbone): the processors'
own conversions disagree between families (DINOv3's reads palette indices as grey levels;
none rescales 16-bit images), so the processor is fed the decoded RGB image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from .errors import SPGError

ENGINES = ("pil", "torch-float", "torch-uint8")
# PIL's resample codes, as processor configs store them (PILImageResampling)
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_PIL_FILTERS = {name: Image.Resampling(code) for code, name in RESAMPLE_NAMES.items()}
_TORCH_FILTERS = {
    "nearest": InterpolationMode.NEAREST_EXACT,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}
PROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class PixelRecipe:
    """How one backbone turns an RGB image into its input pixels (see the module docstring)."""

    engine: str = "pil"
    resample: str = "bicubic"
    rescale_factor: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def tag(self) -> str:
        """What makes two recipes give different pixels before normalisation (the store key's
        `pixels` entry): the engine and filter; mean and std are in the backbone identity's tokens."""
        return f"{self.engine}-{self.resample}" + ("" if self.rescale_factor == 1 / 255 else f"-x{self.rescale_factor}")


LEGACY = PixelRecipe()  # PIL bicubic: what every backbone was fed before recipes existed


def family_recipe(family: str, mean: tuple[float, ...], std: tuple[float, ...]) -> PixelRecipe:
    """The family's processor defaults (the released checkpoints' `preprocessor_config.json`):
    DINOv3 bilinear on float, DINOv2 / SigLIP / CLIP bicubic with PIL."""
    if family == "hf-dinov3":
        return PixelRecipe("torch-float", "bilinear", mean=_three(mean), std=_three(std))
    return PixelRecipe("pil", "bicubic", mean=_three(mean), std=_three(std))


def read_recipe(weights_dir: str | Path, fallback: PixelRecipe) -> PixelRecipe:
    """The recipe a weights directory's `preprocessor_config.json` describes; `fallback` when
    the directory has none. Fields the file leaves out keep `fallback`'s values."""
    path = Path(weights_dir) / PROCESSOR_CONFIG
    if not path.is_file():
        return fallback
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SPGError(
            f"image processor config is unreadable ({exc})",
            path=str(path),
            fix="re-download the weights directory, or delete the file to use the family's defaults",
        ) from None
    kind = str(cfg.get("image_processor_type") or "")
    engine = fallback.engine
    if kind.startswith("DINOv3"):
        engine = "torch-float"
    elif kind:
        engine = "torch-uint8" if kind.endswith("Fast") else "pil"
    resample = RESAMPLE_NAMES.get(cfg.get("resample"), fallback.resample)
    recipe = PixelRecipe(
        engine=engine,
        resample=resample,
        rescale_factor=float(cfg.get("rescale_factor", fallback.rescale_factor))
        if cfg.get("do_rescale", True)
        else 1.0,
        mean=_three(cfg.get("image_mean", fallback.mean)) if cfg.get("do_normalize", True) else (0.0, 0.0, 0.0),
        std=_three(cfg.get("image_std", fallback.std)) if cfg.get("do_normalize", True) else (1.0, 1.0, 1.0),
    )
    check_recipe(recipe, str(path))
    return recipe


def check_recipe(recipe: PixelRecipe, where: str) -> None:
    """Refuse a filter the engine cannot apply (torchvision has no lanczos/box/hamming on tensors)."""
    if recipe.engine != "pil" and recipe.resample not in _TORCH_FILTERS:
        raise SPGError(
            f"resample '{recipe.resample}' is not available to the {recipe.engine} pipeline",
            path=where,
            fix=f"set `resample` to one of {sorted(_TORCH_FILTERS)} (PIL codes 0, 2, 3)",
        )


def resize_rgb(img: Image.Image, size: int, recipe: PixelRecipe) -> torch.Tensor:
    """8-bit RGB PIL image -> `[3, S, S]`: uint8 ("pil", "torch-uint8") or float32 already
    rescaled ("torch-float"). Decoding workers return this; `to_unit` finishes it."""
    if img.mode != "RGB":
        raise ValueError(f"resize_rgb expects an RGB image, got mode {img.mode}")
    if recipe.engine == "pil":
        if img.size != (size, size):
            img = img.resize((size, size), _PIL_FILTERS[recipe.resample])
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    if recipe.engine == "torch-float":
        x = x.float() * recipe.rescale_factor  # as the processor's `rescale`: float32 times a python float
    if tuple(x.shape[-2:]) != (size, size):
        x = TF.resize(x, [size, size], interpolation=_TORCH_FILTERS[recipe.resample], antialias=True)
    return x.contiguous()


def to_unit(images: torch.Tensor, recipe: PixelRecipe) -> torch.Tensor:
    """`resize_rgb` output `[B, 3, S, S]` -> float32 rescaled pixels (before normalisation).

    uint8 is rescaled in float64 and rounded once to float32, as the slow processors'
    `rescale` does; float input is already rescaled."""
    if images.dtype != torch.uint8:
        return images.float()
    return images.double().mul_(recipe.rescale_factor).float()


def _three(values: tuple[float, ...] | list[float] | float) -> tuple[float, float, float]:
    """A processor's mean/std: one value or three."""
    vals = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) != 3:
        raise SPGError(f"image mean/std must have 3 values, got {vals}", fix="fix preprocessor_config.json")
    return (vals[0], vals[1], vals[2])
