"""Pixels as each family's own image processor makes them (spg_core/pixels.py).

Each test writes a family's `preprocessor_config.json` as its released checkpoint has it (a
"saved tiny processor": the released settings, read from a tiny weights directory) and
compares the project's pixel tensors with `transformers.AutoImageProcessor` on the same
decoded image. The official code ran transformers 4.56.1, whose DINOv2, SigLIP and CLIP
processors resize with PIL: under 5.x that is `backend="pil"` (5.x's default torchvision
backend differs by up to one grey level), so the comparison asks for it. DINOv3 has only the
torchvision processor in both versions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers import AutoImageProcessor

from spg_core.backbones import load_backbone
from spg_core.errors import SPGError
from spg_core.images import image_to_tensor, load_image
from spg_core.pixels import LEGACY, PixelRecipe, family_recipe, read_recipe, resize_rgb, to_unit

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])
COMMON = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True}
# family -> (its released preprocessor_config.json, the 4.56.1-equivalent backend under 5.x)
PROCESSORS = {
    "hf-dinov3": (
        {
            **COMMON,
            "image_processor_type": "DINOv3ViTImageProcessorFast",
            "size": {"height": 224, "width": 224},
            "resample": 2,
            "image_mean": IMAGENET[0],
            "image_std": IMAGENET[1],
        },
        "torchvision",
    ),
    "hf-dinov2": (
        {
            **COMMON,
            "image_processor_type": "BitImageProcessor",
            "size": {"shortest_edge": 256},
            "do_center_crop": True,
            "crop_size": {"height": 224, "width": 224},
            "do_convert_rgb": True,
            "resample": 3,
            "image_mean": IMAGENET[0],
            "image_std": IMAGENET[1],
        },
        "pil",
    ),
    "hf-siglip": (
        {
            **COMMON,
            "image_processor_type": "SiglipImageProcessor",
            "size": {"height": 384, "width": 384},
            "resample": 3,
            "image_mean": [0.5, 0.5, 0.5],
            "image_std": [0.5, 0.5, 0.5],
        },
        "pil",
    ),
    "openclip": (
        {
            **COMMON,
            "image_processor_type": "CLIPImageProcessor",
            "size": {"shortest_edge": 336},
            "do_center_crop": True,
            "crop_size": {"height": 336, "width": 336},
            "do_convert_rgb": True,
            "resample": 3,
            "image_mean": CLIP[0],
            "image_std": CLIP[1],
        },
        "pil",
    ),
}
S = 48  # not a divisor of the inputs' sizes, so every filter's weights matter


def _smooth_rgb(seed: int, h: int = 61, w: int = 83) -> np.ndarray:
    """A photo-like uint8 image [h, w, 3]: smooth gradients plus noise, so resizes differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    return np.clip(127.5 + 100 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """RGB, grayscale, RGBA, palette and 16-bit PNG files."""
    root = tmp_path_factory.mktemp("pixels")
    rgb = _smooth_rgb(0)
    alpha = np.linspace(0, 255, rgb.shape[1]).astype(np.uint8)[None].repeat(rgb.shape[0], 0)
    images = {
        "rgb": Image.fromarray(rgb),
        "gray": Image.fromarray(rgb[..., 1]),
        "rgba": Image.fromarray(np.dstack([rgb, alpha])),
        "palette": Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE),
        "16bit": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }
    paths = {}
    for name, img in images.items():
        paths[name] = str(root / f"{name}.png")
        img.save(paths[name])
    assert Image.open(paths["16bit"]).mode.startswith("I;16")
    return paths


def _processor_dir(tmp_path, family: str) -> str:
    cfg, _ = PROCESSORS[family]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


def _reference(weights_dir: str, family: str, image: Image.Image) -> torch.Tensor:
    """AutoImageProcessor's pixels [3, S, S], called as the official code calls it."""
    proc = AutoImageProcessor.from_pretrained(weights_dir, backend=PROCESSORS[family][1])
    size = {"height": S, "width": S}
    return proc(images=image, return_tensors="pt", size=size, crop_size=size)["pixel_values"][0]


def _ours(recipe: PixelRecipe, image: Image.Image) -> torch.Tensor:
    mean, std = torch.tensor(recipe.mean).view(3, 1, 1), torch.tensor(recipe.std).view(3, 1, 1)
    return (image_to_tensor(image, S, recipe) - mean) / std


@pytest.mark.parametrize("family", list(PROCESSORS))
@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "palette", "16bit"])
def test_pixels_equal_the_family_processor(tmp_path, image_files, family, kind):
    weights_dir = _processor_dir(tmp_path, family)
    recipe = read_recipe(weights_dir, LEGACY)
    decoded = load_image(image_files[kind])
    # Measured 0.0 for every family and input (2026-12-07, transformers 5.25 / torchvision 0.29);
    # 1e-6 leaves room for a float32 ulp should a platform's kernels round differently.
    assert (_ours(recipe, decoded) - _reference(weights_dir, family, decoded)).abs().max() <= 1e-6


@pytest.mark.parametrize("family", ["hf-dinov2", "openclip"])
@pytest.mark.parametrize("kind", ["rgb", "gray", "palette"])
def test_the_project_decode_agrees_with_the_processors_own_conversion(tmp_path, image_files, family, kind):
    """Where the processor converts to RGB itself (do_convert_rgb), it sees what the project decodes."""
    weights_dir = _processor_dir(tmp_path, family)
    recipe = read_recipe(weights_dir, LEGACY)
    raw = Image.open(image_files[kind])
    assert (_ours(recipe, load_image(image_files[kind])) - _reference(weights_dir, family, raw)).abs().max() <= 1e-6


def test_dinov3_is_bilinear_on_float_and_the_old_bicubic_was_not_its_processor(tmp_path, image_files):
    weights_dir = _processor_dir(tmp_path, "hf-dinov3")
    recipe = read_recipe(weights_dir, LEGACY)
    assert (recipe.engine, recipe.resample) == ("torch-float", "bilinear")
    assert recipe == family_recipe("hf-dinov3", *IMAGENET)  # the defaults are the released config
    decoded = load_image(image_files["rgb"])
    ref = _reference(weights_dir, "hf-dinov3", decoded)
    before = _ours(PixelRecipe(mean=recipe.mean, std=recipe.std), decoded)  # PIL bicubic, as before
    assert (before - ref).abs().max() > 0.05  # the bug this fixes: measured 0.41 on real images


def test_5x_default_backend_is_not_the_pinned_one(tmp_path, image_files):
    """Why the comparison asks for backend="pil": 5.x's default differs from 4.56.1's slow processor."""
    weights_dir = _processor_dir(tmp_path, "hf-dinov2")
    decoded = load_image(image_files["rgb"])
    size = {"height": S, "width": S}
    default = AutoImageProcessor.from_pretrained(weights_dir)(
        images=decoded, return_tensors="pt", size=size, crop_size=size
    )["pixel_values"][0]
    pinned = _reference(weights_dir, "hf-dinov2", decoded)
    grey_levels = ((default - pinned) * torch.tensor(IMAGENET[1]).view(3, 1, 1) * 255).abs().max()
    assert 0.5 < grey_levels <= 1.01


def test_a_tiny_dinov3_weights_dir_is_read_with_its_processor(tmp_path, image_files):
    """load_backbone(--weights DIR) takes the recipe from DIR; without the file, the family's defaults."""
    config = transformers.DINOv3ViTConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, patch_size=16
    )
    torch.manual_seed(0)
    transformers.DINOv3ViTModel(config).save_pretrained(tmp_path)
    plain = load_backbone("dinov3-vitl16", weights=str(tmp_path), device="cpu", image_size=S)
    assert plain.pixels == family_recipe("hf-dinov3", *IMAGENET)
    cfg = dict(PROCESSORS["hf-dinov3"][0], resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    bb = load_backbone("dinov3-vitl16", weights=str(tmp_path), device="cpu", image_size=S)
    assert (bb.pixels.resample, bb.mean, bb.std) == ("bicubic", (0.5,) * 3, (0.5,) * 3)
    assert bb.identity()["pixels"] == "torch-float-bicubic"
    decoded = load_image(image_files["rgb"])
    ref = _reference(str(tmp_path), "hf-dinov3", decoded)
    assert (bb.normalise(image_to_tensor(decoded, S, bb.pixels)[None])[0] - ref).abs().max() <= 1e-6


def test_the_legacy_recipe_keeps_old_store_keys_and_pixels():
    """PIL bicubic is what every backbone had before recipes: no `pixels` key, x / 255 exactly."""
    bb = load_backbone("builtin", device="cpu")
    assert "pixels" not in bb.identity()
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_unit(x, LEGACY), x.float().div(255.0))


def test_a_filter_torchvision_lacks_is_refused(tmp_path):
    cfg = dict(PROCESSORS["hf-dinov3"][0], resample=1)  # lanczos
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SPGError, match="lanczos"):
        read_recipe(tmp_path, LEGACY)
    assert resize_rgb(Image.new("RGB", (9, 7)), 4, LEGACY).shape == (3, 4, 4)
