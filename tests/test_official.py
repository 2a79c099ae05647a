"""The official protocol, re-derived in the test from the official formulas (docs/SPG_METHOD.md,
riips/SPG) on tiny models and random tokens, against the engine's output.

Tolerances: 1e-5 absolute (float32 arithmetic in a different order: the engine fuses the top-k
decode and normalises with F.normalize's floor 1e-12 where the official code uses
F.cosine_similarity's 1e-8; on random unit-scale vectors those floors never bind) unless a test
says otherwise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from spg_core.backbones import load_backbone, parse_backbone_name
from spg_core.config import GuideConfig, RunConfig, SAEConfig, ScoreConfig
from spg_core.errors import SPGError
from spg_core.guides import GuideBatch, GuideSet, official_guide_loss, train_guides
from spg_core.inference import Scorer
from spg_core.protocols import OFFICIAL, PRESETS, default_preset, overrides
from spg_core.sae import SparseCode, TopKSAE
from spg_core.sae_train import auxk_dead_steps, dead_atom_mask, loss_with_auxk, mark_silent_steps, train_sae

ATOL = 1e-5


def _official_sae(dim=8, width=32, k=4, seed=0) -> TopKSAE:
    """A bias-free SAE whose atoms are deliberately NOT unit norm, so the in-forward
    normalisation is exercised."""
    sae = TopKSAE(dim, width, k, seed=seed, bias=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.W_dec.mul_(1 + torch.rand(width, generator=g))
        sae.W_enc.add_(0.3 * torch.randn(width, dim, generator=g))
    return sae


def _reference_forward(sae: TopKSAE, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official SAE forward: rows D [M, D] normalised by (norm + 1e-8), pre = x W^T, top-k clamped at 0."""
    rows = sae.W_dec.detach().t()
    d_n = rows / (rows.norm(dim=-1, keepdim=True) + 1e-8)
    pre = x @ sae.W_enc.detach().t()
    vals, idx = torch.topk(pre, k, dim=-1)
    z = torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))
    return z @ d_n, z, pre


def test_protocol_defaults_by_backbone_family():
    def protocol(name: str) -> str:
        return PRESETS[default_preset(parse_backbone_name(name)[0].family)].protocol

    assert protocol("dinov3-vitl16") == protocol("openclip-vitl14-336-tiny") == OFFICIAL
    assert protocol("builtin") == protocol("effnet-lite0") == "studio"
    cfg = RunConfig.from_dict({**overrides(OFFICIAL), "protocol": OFFICIAL})
    assert (cfg.sae.k, cfg.sae.width, cfg.sae.auxk, cfg.sae.bias, cfg.sae.adam_betas) == (
        32,
        4096,
        512,
        False,
        (0.5, 0.999),
    )
    assert (cfg.guides.form, cfg.guides.lr, cfg.guides.batch_images, cfg.guides.epochs) == ("official", 0.01, 8, 15)
    # Runs older than protocols load as studio runs.
    assert RunConfig.from_dict({"aux": "a"}).protocol == "studio"


def test_official_sae_forward_matches_the_formula():
    sae = _official_sae()
    x = torch.randn(50, 8)
    expected, z, _ = _reference_forward(sae, x, 4)
    recon, code = sae(x)
    torch.testing.assert_close(recon, expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(code.dense(32), z, atol=ATOL, rtol=0)
    assert sae.b_enc is None and sae.b_dec is None


def test_official_init_is_tied_and_unit_norm():
    sae = TopKSAE(16, 64, 4, seed=3, bias=False)
    norms = sae.W_dec.norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-6, rtol=0)
    torch.testing.assert_close(sae.W_enc, sae.W_dec.t())  # encoder = dictionary


def test_auxk_loss_and_dead_rule_match_the_formula():
    sae = _official_sae()
    cfg = SAEConfig(width=32, k=4, bias=False, auxk=8, auxk_coef=1 / 32, auxk_dead_tokens=6, auxk_threshold=1e-3)
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(5))  # 3 tokens x k 4: most latents silent
    dead_steps = auxk_dead_steps(cfg, 3)
    assert dead_steps == 2  # max(1, 6 // 3)
    silent = torch.arange(32) % 4  # 0..3 steps silent before this one
    before = silent.clone()
    loss, _values, _indices = loss_with_auxk(sae, x, cfg, silent, dead_steps, bf16=False)

    x_hat, z, pre = _reference_forward(sae, x, 4)
    fired = (z > 1e-3).any(dim=0)
    want_silent = torch.where(fired, torch.ones_like(before), before + 1)
    assert torch.equal(silent, want_silent)
    dead = want_silent > dead_steps
    assert dead.any() and not dead.all()
    vals, idx = torch.topk(pre * dead, 8, dim=-1)
    z_aux = torch.zeros_like(pre).scatter_(-1, idx, vals.clamp_min(0))
    rows = sae.W_dec.detach().t()
    e_hat = z_aux @ (rows / (rows.norm(dim=-1, keepdim=True) + 1e-8))
    want = (x_hat - x).pow(2).mean(-1).mean() + (1 / 32) * ((x - x_hat) - e_hat).pow(2).mean(-1).mean()
    torch.testing.assert_close(loss, want, atol=ATOL, rtol=0)


def test_auxk_residual_is_detached():
    """The AuxK term trains the dead latents towards the residual; it must not pull the main
    reconstruction (official: e = x - x_hat.detach())."""
    sae = _official_sae()
    cfg = SAEConfig(width=32, k=4, bias=False, auxk=8, auxk_dead_tokens=1)
    x = torch.randn(50, 8)
    silent = torch.full((32,), 5)
    loss, *_ = loss_with_auxk(sae, x, cfg, silent, 1, bf16=False)
    loss.backward()
    grad_full = sae.W_enc.grad.clone()
    sae.zero_grad()
    x_hat, _, _ = sae(x)[0], None, None
    (x_hat - x).pow(2).mean(-1).mean().backward()
    # Live latents' encoder rows get gradient only from the MSE term (AuxK reads dead ones only).
    live = silent <= 1
    torch.testing.assert_close(grad_full[live], sae.W_enc.grad[live], atol=1e-6, rtol=0)


def test_silence_counter_restarts_at_one_for_fired_latents():
    silent = torch.tensor([0, 3, 7, 2])
    code = SparseCode(values=torch.tensor([[0.5, 1e-4]]), indices=torch.tensor([[1, 2]]))
    mark_silent_steps(silent, code, 1e-3)
    assert silent.tolist() == [1, 1, 8, 3]  # atom 2's 1e-4 is below the threshold


def test_official_training_keeps_atoms_unit_norm_and_dead_mask_is_never_fired():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(400, 8, generator=g)
    cfg = SAEConfig(width=64, k=4, epochs=2, batch_images=2, bias=False, auxk=16, adam_betas=(0.5, 0.999))
    sae, _ = train_sae(tokens, cfg, tokens_per_image=20, device=torch.device("cpu"), progress=False)
    norms = sae.W_dec.detach().norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    dead = dead_atom_mask(sae, tokens)
    _, z, _ = _reference_forward(sae, tokens, 4)
    assert torch.equal(dead, (z > 0).sum(0) == 0)  # official count_active == 0


# -- guides ----------------------------------------------------------------------------------


def _guide_problem(seed=0, b=3, grid=(4, 4), d=8, m=16, size=16):
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(d, m, generator=g), dim=0)
    tokens = torch.randn(b, grid[0] * grid[1], d, generator=g)
    cls = torch.randn(b, d, generator=g)
    masks = (torch.rand(b, size, size, generator=g) > 0.7).float()
    masks[0] = 0
    labels = torch.tensor([0, 1, 1])
    return dictionary, GuideBatch(tokens, masks, labels, cls), grid


def test_four_guide_loss_matches_the_official_formula():
    dictionary, batch, grid = _guide_problem()
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[2, 5]] = True
    pair = GuideSet(16, "relu_l1", form="official", init_scale=0.1, seed=1, dead=dead)
    with torch.no_grad():
        pair.theta[:, 0] = -0.2  # a negative entry: ReLU makes it 0
    cfg = GuideConfig(form="official", tau=0.07, l1=1e-3)
    terms = official_guide_loss(pair, dictionary, batch, cfg, grid)

    c = torch.relu(pair.theta.detach()) * (~dead).float()
    assert torch.all(c[:, [0, 2, 5]] == 0)
    g = c @ dictionary.t()  # [4, D]
    sim_local = F.cosine_similarity(batch.tokens[:, :, None, :], g[None, None, 2:], dim=-1)  # [B, N, 2]
    probs = torch.softmax(sim_local / 0.07, dim=-1)
    maps = F.interpolate(
        probs.permute(0, 2, 1).reshape(3, 2, *grid), size=(16, 16), mode="bilinear", align_corners=False
    )
    one_hot = torch.stack([1 - batch.masks, batch.masks], 1).clamp(1e-5, 1 - 1e-5)
    pt = (one_hot * maps).sum(1) + 1e-5
    focal = (-((1 - pt) ** 2) * pt.log()).mean()

    def dice(p, t):
        return 1 - ((2 * (p * t).flatten(1).sum(1) + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)).mean()

    seg = focal + dice(maps[:, 1], batch.masks) + dice(maps[:, 0], 1 - batch.masks)
    ce = F.cross_entropy(F.cosine_similarity(batch.cls[:, None, :], g[None, :2], dim=-1), batch.labels)
    l1 = 1e-3 * c.abs().sum(-1).mean()
    torch.testing.assert_close(terms["focal"], focal, atol=ATOL, rtol=0)
    torch.testing.assert_close(terms["global_ce"], ce, atol=ATOL, rtol=0)
    torch.testing.assert_close(terms["l1"], l1, atol=1e-7, rtol=0)
    torch.testing.assert_close(terms["loss"], seg + ce + l1, atol=ATOL, rtol=0)


def test_official_init_and_ema_copy_then_decay():
    pair = GuideSet(2000, form="official", init_scale=0.1, seed=0)
    theta = pair.theta.detach()
    assert abs(float(theta.mean()) - 0.1) < 1e-3 and abs(float(theta.std()) - 0.01) < 1e-3  # 8000 draws
    with torch.no_grad():
        pair.theta.fill_(1.0)
    pair.update_ema(0.999)
    assert torch.equal(pair.theta_ema, pair.theta.detach())  # AveragedModel: first update copies
    with torch.no_grad():
        pair.theta.fill_(3.0)
    pair.update_ema(0.999)
    torch.testing.assert_close(pair.theta_ema, torch.full_like(pair.theta_ema, 0.999 * 1 + 0.001 * 3))


def test_topk_straight_through_keeps_k_forward_and_all_gradients():
    pair = GuideSet(10, "topk", topk=3, form="official", init_scale=0.1, seed=0)
    theta = pair.theta
    c = pair.all_coefficients(theta)
    assert torch.all((c > 0).sum(-1) == 3)
    weights = torch.randn(4, 10)
    (c * weights).sum().backward()
    torch.testing.assert_close(theta.grad, weights * (theta.detach() > 0).float())  # identity through ReLU>0


def test_training_never_uses_dead_atoms():
    dictionary, batch, grid = _guide_problem()
    dead = torch.zeros(16, dtype=torch.bool)
    dead[:5] = True
    cfg = GuideConfig(form="official", epochs=3, batch_images=2, lr=0.01, init_scale=0.1, adam_betas=(0.5, 0.999))
    pair, _ = train_guides(
        dictionary,
        lambda idx: GuideBatch(batch.tokens[idx], batch.masks[idx], batch.labels[idx], batch.cls[idx]),
        3,
        grid,
        cfg,
        device=torch.device("cpu"),
        progress=False,
        dead=dead,
    )
    c = pair.all_coefficients()
    assert torch.all(c[:, :5] == 0) and torch.all(c[:, 5:].sum(0) > 0)


# -- scoring ----------------------------------------------------------------------------------


def test_smoothed_map_and_image_score_match_scipy():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 8, generator=g)
    guides = torch.randn(2, 8, generator=g)
    scorer = Scorer(guides, 0.07, (4, 4), 32, ScoreConfig(smoothing_sigma=4.0, image_score="smoothed_map"))
    _probs, maps, scores = scorer(tokens)
    # The official map (p_a + 1 - p_n) / 2 from the 2-class softmax, upsampled channel-wise.
    sim = F.cosine_similarity(tokens[:, :, None], guides[None, None], dim=-1)
    p = torch.softmax(sim / 0.07, dim=-1).permute(0, 2, 1).reshape(2, 2, 4, 4)
    up = F.interpolate(p, size=(32, 32), mode="bilinear", align_corners=False)
    official = (up[:, 1] + 1 - up[:, 0]) / 2
    torch.testing.assert_close(maps, official, atol=ATOL, rtol=0)
    smoothed = np.stack([gaussian_filter(m.double().numpy(), sigma=4) for m in official])  # reflect, truncate 4
    np.testing.assert_allclose(scores.numpy(), smoothed.reshape(2, -1).max(1), atol=ATOL)


def test_cls_image_score_is_the_global_softmax():
    g = torch.Generator().manual_seed(1)
    tokens, cls = torch.randn(3, 16, 8, generator=g), torch.randn(3, 8, generator=g)
    local, glob = torch.randn(2, 8, generator=g), torch.randn(2, 8, generator=g)
    scorer = Scorer(local, 0.07, (4, 4), 16, ScoreConfig(image_score="cls"), global_guides=glob)
    _, _, scores = scorer(tokens, cls)
    sim = F.cosine_similarity(cls[:, None], glob[None], dim=-1)
    torch.testing.assert_close(scores, torch.softmax(sim / 0.07, -1)[:, 1], atol=ATOL, rtol=0)


# -- tokens ------------------------------------------------------------------------------------


def _hidden(bb, x):
    out = bb.model(pixel_values=bb.normalise(x), output_hidden_states=True, **bb.forward_kwargs)
    return out


@pytest.mark.parametrize("name", ["dinov3-vitl16-tiny", "dinov2-large-tiny", "siglip-large-tiny"])
def test_official_tokens_per_family(name):
    """DINOv3 official = post-norm (= last_hidden_state at the last block); DINOv2 = the raw block
    output (its final LayerNorm gives last_hidden_state); SigLIP = post_layernorm(block), no CLS."""
    bb = load_backbone(name, device="cpu", protocol=OFFICIAL)
    x = torch.rand(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    tokens, cls = bb.extract_with_cls(x)
    with torch.no_grad():
        out = _hidden(bb, x)
    last = out.last_hidden_state
    p = bb.num_prefix_tokens
    if name.startswith("dinov3") or name.startswith("siglip"):
        torch.testing.assert_close(tokens, last[:, p:], atol=1e-5, rtol=0)
    else:
        assert (tokens - last[:, p:]).abs().max() > 1e-2  # not post-norm
        torch.testing.assert_close(
            bb.model.layernorm(torch.cat([cls[:, None], tokens], 1)),
            last[:, [0] + list(range(p, last.shape[1]))],
            atol=1e-5,
            rtol=0,
        )
    if name.startswith("siglip"):
        assert cls is None
    else:
        torch.testing.assert_close(cls, (last[:, 0] if name.startswith("dinov3") else cls), atol=1e-5, rtol=0)
    assert bb.identity()["tokens"] == "official" and bb.mask_resize == "bilinear"


def test_official_openclip_tokens_are_projected_with_cls():
    bb = load_backbone("openclip-vitl14-336-tiny", device="cpu", protocol=OFFICIAL)
    x = torch.rand(2, 3, bb.image_size, bb.image_size, generator=torch.Generator().manual_seed(0))
    tokens, cls = bb.extract_with_cls(x)
    with torch.no_grad():
        pooled, _ = bb.visual(bb.normalise(x))  # ln_post(x[:, 0]) @ proj
    torch.testing.assert_close(cls, pooled, atol=1e-5, rtol=0)
    assert tokens.shape[-1] == bb.visual.proj.shape[1] == bb.dim


def test_weights_of_any_size_of_the_family_load_with_their_own_width_and_depth(tmp_path):
    """`--weights` takes any size of the architecture: D, patch and depth come from the checkpoint's
    config and `--layer` defaults to its last block; another architecture is refused."""
    import transformers  # noqa: PLC0415 -- heavy (seconds): loaded with HF backbones only

    cfg = transformers.Dinov2Config(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56
    )
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path / "d2")
    bb = load_backbone("dinov2-large", str(tmp_path / "d2"), device="cpu", protocol=OFFICIAL, image_size=56)
    assert (bb.dim, bb.patch_size, bb.layer) == (48, 14, 3)
    tokens, cls = bb.extract_with_cls(torch.rand(1, 3, 56, 56))
    assert tokens.shape == (1, 16, 48) and cls.shape == (1, 48)
    assert (
        load_backbone(
            "dinov2-large", str(tmp_path / "d2"), device="cpu", protocol=OFFICIAL, image_size=56, layer=2
        ).layer
        == 2
    )
    with pytest.raises(SPGError, match="dinov2"):
        load_backbone("dinov3-vitl16", str(tmp_path / "d2"), device="cpu", protocol=OFFICIAL, image_size=64)
