"""Backbone registry and adapters, on CPU with tiny random models (and full-size ones on 'meta')."""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import try_to_load_from_cache

import spg_core.backbones.hf as hf
from spg_core.backbones import BACKBONES, list_backbones, load_backbone, parse_backbone_name
from spg_core.backbones.base import Backbone
from spg_core.backbones.hf import load_hf_backbone
from spg_core.backbones.openclip import TINY_VISION_CFG, interpolate_pos_embed
from spg_core.errors import SPGError

TINY = ["dinov3-vitl16-tiny", "dinov2-large-tiny", "siglip-large-tiny", "openclip-vitl14-336-tiny"]
# CLS + registers the adapters must drop: DINOv3 has 4 registers, SigLIP no CLS at all.
DROPPED = {"dinov3-vitl16-tiny": 5, "dinov2-large-tiny": 1, "siglip-large-tiny": 0, "openclip-vitl14-336-tiny": 1}
# SPG_METHOD.md, "Frozen encoder": S, grid side, D.
TABLE = {
    "dinov3-vitl16": (448, 28, 1024),
    "dinov2-large": (448, 32, 1024),
    "siglip-large": (384, 24, 1024),
    "openclip-vitl14-336": (518, 37, 1024),
}


ALL = TINY + ["builtin"]

_CACHE: dict[str, Backbone] = {}


def _get(name: str) -> Backbone:
    """Each tiny backbone is built once per session, with a fixed seed."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = load_backbone(name, device="cpu")
    return _CACHE[name]


def _images(backbone: Backbone, n: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, backbone.image_size, backbone.image_size, generator=g)


def _full_sequence(backbone: Backbone, images: torch.Tensor) -> torch.Tensor:
    """All final-block tokens (prefix included, after the final norm) straight from the raw model."""
    x = backbone.normalise(images)
    if hasattr(backbone, "model"):  # transformers
        return backbone.model(pixel_values=x, **backbone.forward_kwargs).last_hidden_state
    visual = backbone.visual  # open_clip: capture the transformer's full output with a hook
    seen: list[torch.Tensor] = []
    handle = visual.transformer.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        visual(x)
    finally:
        handle.remove()
    return visual.ln_post(seen[0])


# Output contract -------------------------------------------------------------------------------


# builtin's case: 57 s on the 2-core VM (2026-12-07 quick-tier durations), so it runs in the slow tier.
@pytest.mark.parametrize("name", [*TINY, pytest.param("builtin", marks=pytest.mark.slow)])
def test_output_shape_matches_grid_and_dim(name: str) -> None:
    b = _get(name)
    tokens = b.extract(_images(b))
    h, w = b.grid
    assert tokens.shape == (3, h * w, b.dim)
    assert tokens.dtype == torch.float32 and torch.isfinite(tokens).all()
    assert not b.training and not any(p.requires_grad for p in b.parameters())


@pytest.mark.parametrize("name", TINY)
def test_tiny_variants_are_the_real_classes_with_random_tiny_weights(name: str) -> None:
    b = _get(name)
    spec, variant = parse_backbone_name(name)
    assert variant == "tiny" and b.name == name and b.weights == "random-tiny"
    assert b.identity()["weights"] == "random-tiny" and b.identity()["backbone"] == name
    assert b.patch_size == spec.patch_size and (b.mean, b.std) == (spec.mean, spec.std)
    model = b.model if hasattr(b, "model") else b.visual
    expected = {
        "dinov3-vitl16-tiny": "DINOv3ViTModel",
        "dinov2-large-tiny": "Dinov2Model",
        "siglip-large-tiny": "SiglipVisionModel",
        "openclip-vitl14-336-tiny": "VisionTransformer",
    }[name]
    assert type(model).__name__ == expected
    if hasattr(b, "model"):
        assert b.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("name", TINY)
def test_cls_and_register_tokens_are_dropped(name: str) -> None:
    b = _get(name)
    x = _images(b, n=2)
    with torch.no_grad():
        full = _full_sequence(b, x)
        tokens = b(x)
    n = b.num_patches
    assert full.shape[1] - n == DROPPED[name]
    torch.testing.assert_close(tokens, full[:, full.shape[1] - n :])
    if DROPPED[name]:
        # the dropped rows really are different tokens (CLS, registers), not duplicated patches
        assert not any(torch.allclose(full[:, i], tokens[:, j]) for i in range(DROPPED[name]) for j in range(n))


def test_dinov3_tiny_keeps_four_registers_like_the_real_model() -> None:
    b = _get("dinov3-vitl16-tiny")
    assert b.model.config.num_register_tokens == 4 == b.num_prefix_tokens - 1
    x = b.normalise(_images(b, n=1))
    with torch.no_grad():
        out = b.model(pixel_values=x)
    torch.testing.assert_close(out.pooler_output, out.last_hidden_state[:, 0])  # position 0 is the CLS token


@pytest.mark.parametrize("name", TINY)  # the builtin has identity mean/std and reads raw [0, 1] pixels
def test_normalisation_is_applied(name: str) -> None:
    b = _get(name)
    x = _images(b, n=2)
    before = b.extract(x)
    mean, std = b.mean, b.std
    try:
        b.mean, b.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        raw = b.extract(x)
        manual = b.extract((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    finally:
        b.mean, b.std = mean, std
    assert not torch.allclose(before, raw, atol=1e-4)
    torch.testing.assert_close(before, manual, atol=1e-5, rtol=1e-5)  # forward(x) == model(normalised x)


# builtin's features take seconds per image (40 s for this case on 2 busy cores, 2026-11-29), the
# tiny models' milliseconds.
@pytest.mark.parametrize("name", TINY + [pytest.param("builtin", marks=pytest.mark.slow)])
def test_batch_independence(name: str) -> None:
    b = _get(name)
    x = _images(b, n=4)
    alone = b.extract(x[:1])
    other = x.clone()
    other[1:] = torch.rand_like(other[1:])
    together = b.extract(x)
    with_others = b.extract(other)
    torch.testing.assert_close(alone[0], together[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone[0], with_others[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(together[1], with_others[1], atol=1e-4)  # the other images do matter to themselves


def test_registry_constants_follow_the_method_table() -> None:
    assert list_backbones() == [
        "dinov3-vitl16",
        "dinov2-large",
        "siglip-large",
        "openclip-vitl14-336",
        "effnet-lite0",
        "effnet-lite1",
        "effnet-lite2",
        "builtin",
    ]
    assert "siglip-large-tiny" in list_backbones(include_variants=True)
    assert "builtin-tiny" not in list_backbones(include_variants=True)
    for name, (size, side, dim) in TABLE.items():
        spec = BACKBONES[name]
        assert (spec.image_size, spec.grid, spec.dim) == (size, (side, side), dim)
    assert BACKBONES["openclip-vitl14-336"].mean == (0.48145466, 0.4578275, 0.40821073)
    assert BACKBONES["siglip-large"].std == (0.5, 0.5, 0.5)
    assert BACKBONES["dinov3-vitl16"].weights == "facebook/dinov3-vitl16-pretrain-lvd1689m"


@pytest.mark.parametrize("name", list(TABLE))
def test_full_size_random_variants_on_meta(name: str) -> None:
    """The -random variants are the released architectures at SPG's resolution (no FLOPs spent: 'meta')."""
    b = load_backbone(f"{name}-random", device="meta")
    size, side, dim = TABLE[name]
    assert (b.image_size, b.grid, b.dim, b.weights) == (size, (side, side), dim, "random")
    out = b(torch.empty(1, 3, size, size, device="meta"))
    assert out.shape == (1, side * side, dim)  # DINOv2 at 448 -> 32x32, OpenCLIP at 518 -> 37x37
    params = sum(p.numel() for p in b.parameters())
    assert 290e6 < params < 330e6  # ViT-L


# Position embeddings at a new resolution -------------------------------------------------------


def test_openclip_tiny_runs_at_its_interpolated_grid() -> None:
    b = _get("openclip-vitl14-336-tiny")

    native = TINY_VISION_CFG["image_size"] // TINY_VISION_CFG["patch_size"]
    assert b.grid == (6, 6) != (native, native)
    assert b.visual.positional_embedding.shape[0] == 1 + 36
    assert b.extract(_images(b)).shape[1] == 36


def test_openclip_interpolation_matches_open_clip_resize() -> None:
    """Our 24x24 -> 37x37 resize equals open_clip's own `resize_pos_embed` (what force_image_size does)."""
    from open_clip.model import resize_pos_embed  # noqa: PLC0415 -- heavy: loaded with OpenCLIP backbones only

    table = torch.randn(1 + 24 * 24, 64)
    state = {"visual.positional_embedding": table.clone()}
    resize_pos_embed(state, SimpleNamespace(visual=SimpleNamespace(grid_size=(37, 37))))
    ours = interpolate_pos_embed(table, (37, 37))
    assert ours.shape == (1 + 37 * 37, 64)
    torch.testing.assert_close(ours, state["visual.positional_embedding"])
    torch.testing.assert_close(ours[0], table[0])  # the class token's embedding is untouched


def test_dinov2_tiny_interpolates_its_position_table() -> None:
    """Like dinov2-large (37x37 table, 32x32 input), the tiny model's 5x5 table is resized to its 4x4 grid."""
    b = _get("dinov2-large-tiny")
    assert b.model.embeddings.position_embeddings.shape[1] == 1 + 25
    assert b.grid == (4, 4) and b.extract(_images(b)).shape[1] == 16


# Errors ----------------------------------------------------------------------------------------


def test_unknown_name_lists_known_names_and_suggests() -> None:
    with pytest.raises(SPGError) as err:
        load_backbone("dinov3-vit16")
    text = str(err.value)
    assert "dinov3-vitl16" in text and "Did you mean" in text
    assert all(n in text for n in list_backbones())
    with pytest.raises(SPGError):
        load_backbone("builtin-tiny")


def test_variants_take_no_weights() -> None:
    with pytest.raises(SPGError, match="takes no weights"):
        load_backbone("dinov2-large-tiny", "facebook/dinov2-large", device="cpu")


@pytest.mark.parametrize("name", ["dinov3-vitl16", "dinov2-large", "siglip-large", "openclip-vitl14-336"])
def test_missing_local_weights_path(name: str, tmp_path) -> None:
    missing = tmp_path / "no-such-weights"
    with pytest.raises(SPGError) as err:
        load_backbone(name, str(missing), device="cpu")
    assert str(missing) in str(err.value)


def test_hf_directory_without_config(tmp_path) -> None:
    with pytest.raises(SPGError, match="config.json") as err:
        load_backbone("dinov2-large", str(tmp_path), device="cpu")
    assert str(tmp_path) in str(err.value)


def test_openclip_directory_without_checkpoint(tmp_path) -> None:
    with pytest.raises(SPGError, match="open_clip_pytorch_model.bin"):
        load_backbone("openclip-vitl14-336", str(tmp_path), device="cpu")


def _uncached(repo: str, filename: str = "config.json") -> bool:
    return not isinstance(try_to_load_from_cache(repo, filename), str)


@pytest.mark.parametrize(
    "name,weights",
    [
        ("dinov3-vitl16", "spg-tests/no-such-model-anywhere"),
        ("dinov3-vitl16", None),
        ("siglip-large", None),
        ("openclip-vitl14-336", None),
    ],
)
def test_offline_uncached_hub_id_fails_fast(name: str, weights: str | None, monkeypatch) -> None:
    spec = BACKBONES[name]
    repo = weights or (spec.weights if spec.family != "openclip" else "timm/vit_large_patch14_clip_336.openai")
    fname = "config.json" if spec.family != "openclip" else "open_clip_pytorch_model.bin"
    if not _uncached(repo, fname):
        pytest.skip(f"{repo} is in the local cache here")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SPGError) as err:
        load_backbone(name, weights, device="cpu")
    assert time.monotonic() - start < 10
    text = str(err.value)
    assert name in text and (weights or spec.weights) in text
    assert "hf download" in text and "--weights DIR" in text and "HF_HOME" in text
    if spec.gated:
        assert "gated" in text and "licence" in text


def test_unreachable_hub_fails_fast_without_offline_flag(monkeypatch) -> None:
    """No HF_HUB_OFFLINE and no network: the reachability probe stops the ~25 s retry loop."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf, "hub_reachable", lambda timeout=3.0: False)
    start = time.monotonic()
    with pytest.raises(SPGError, match="spg-tests/no-such-model-anywhere"):
        load_backbone("dinov2-large", "spg-tests/no-such-model-anywhere", device="cpu")
    assert time.monotonic() - start < 10


def test_local_directory_round_trip_and_architecture_check(tmp_path) -> None:
    """A `from_pretrained` directory loads through the released-weights path; another family is refused."""
    tiny = _get("dinov3-vitl16-tiny")
    tiny.model.save_pretrained(tmp_path)
    spec = dataclasses.replace(BACKBONES["dinov3-vitl16"], dim=tiny.dim, image_size=tiny.image_size)
    loaded = load_hf_backbone(spec, None, str(tmp_path), torch.device("cpu")).eval()
    assert loaded.weights == str(tmp_path)
    x = _images(tiny)
    torch.testing.assert_close(loaded.extract(x), tiny.extract(x))
    # Any size of the family loads under the registry name (official runs were made on other sizes too);
    # another family's directory is refused before loading.
    assert load_backbone("dinov3-vitl16", str(tmp_path), device="cpu").dim == tiny.dim
    _get("dinov2-large-tiny").model.save_pretrained(tmp_path / "dinov2")
    with pytest.raises(SPGError, match="not a dinov3 one"):
        load_backbone("dinov3-vitl16", str(tmp_path / "dinov2"), device="cpu")


def test_unavailable_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SPGError, match="CUDA"):
        load_backbone("dinov2-large-tiny", device="cuda")


def test_an_openclip_backbone_without_open_clip_names_the_extra(monkeypatch):
    """open_clip is the `openclip` extra, not a base dependency: its absence is one clear error."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    with pytest.raises(SPGError, match="needs open_clip") as exc:
        load_backbone("openclip-vitl14-336-tiny", device="cpu")
    assert "spg-studio[openclip]" in exc.value.fix
