"""Fast paths agree with the plain fp32 path: sparse decode, bf16 autocast, CUDA scoring/training.

Tolerances: sparse vs dense decode 1e-5 (same arithmetic, other order); bf16 SAE
training and inference within 0.01 FVU of fp32; CUDA
vs CPU maps within 1e-4 (fp32) or 2e-2 (bf16 backbone).
"""

import pytest
import torch

from spg_core.backbones import load_backbone
from spg_core.config import SAEConfig
from spg_core.inference import Scorer
from spg_core.sae import TopKSAE
from spg_core.sae_train import evaluate_sae, train_sae

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _tokens(n=6000, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(96, d, generator=g)
    coef = torch.relu(torch.randn(n, 96, generator=g) - 1.2)
    return coef @ basis / 3 + 0.05 * torch.randn(n, d, generator=g) + 1.0


def test_sparse_decode_matches_dense_in_values_and_gradients():
    sae = TopKSAE(32, 256, 12, seed=1)
    f = _tokens(500)
    dense, _ = sae(f)
    dense.pow(2).sum().backward()
    grads = {k: p.grad.clone() for k, p in sae.named_parameters()}
    sae.zero_grad()
    sparse, _ = sae(f, sparse_decode=True)
    sparse.pow(2).sum().backward()
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-5)
    for k, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # 48 s on the 2-core VM, 2026-12-07: out of the quick tier
def test_training_with_sparse_decode_matches_dense():
    tokens = _tokens()
    cfg = SAEConfig(width=192, k=8, epochs=3, batch_images=4)
    _dense, h_dense = train_sae(tokens, cfg, tokens_per_image=50, device=torch.device("cpu"), progress=False)
    _sparse, h_sparse = train_sae(
        tokens, cfg, tokens_per_image=50, device=torch.device("cpu"), progress=False, sparse_decode=True
    )
    assert abs(h_dense[-1]["fvu"] - h_sparse[-1]["fvu"]) < 0.01


@pytest.mark.slow  # 51 s on the 2-core VM, 2026-12-07: out of the quick tier
def test_bf16_autocast_sae_close_to_fp32():
    tokens = _tokens()
    cfg = SAEConfig(width=192, k=8, epochs=3, batch_images=4)
    fp32, h32 = train_sae(tokens, cfg, tokens_per_image=50, device=torch.device("cpu"), progress=False, bf16=False)
    _bf16, h16 = train_sae(tokens, cfg, tokens_per_image=50, device=torch.device("cpu"), progress=False, bf16=True)
    assert abs(h32[-1]["fvu"] - h16[-1]["fvu"]) < 0.01
    # bf16 inference of the same SAE: reconstruction quality within 0.01 FVU of fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fvu16 = evaluate_sae(fp32, tokens)["fvu"]
    assert abs(fvu16 - evaluate_sae(fp32, tokens)["fvu"]) < 0.01


@cuda
def test_cuda_scoring_matches_cpu():
    g = torch.randn(2, 46)
    tokens = torch.randn(4, 1024, 46)
    cpu = Scorer(g, 0.07, (32, 32), 256)(tokens)
    gpu = Scorer(g.cuda(), 0.07, (32, 32), 256)(tokens.cuda())
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@cuda
def test_cuda_sae_bf16_within_one_percent_fvu_of_fp32():
    tokens = _tokens(20000).cuda()
    cfg = SAEConfig(width=512, k=16, epochs=4, batch_images=8)
    _, h32 = train_sae(tokens, cfg, tokens_per_image=100, device=torch.device("cuda"), progress=False, bf16=False)
    _, h16 = train_sae(
        tokens, cfg, tokens_per_image=100, device=torch.device("cuda"), progress=False, bf16=True, sparse_decode=True
    )
    assert abs(h32[-1]["fvu"] - h16[-1]["fvu"]) < 0.01


@cuda
@pytest.mark.parametrize("name", ["builtin", "dinov3-vitl16-tiny", "dinov2-large-tiny", "siglip-large-tiny"])
def test_cuda_backbones_match_cpu(name):
    cpu = load_backbone(name, device="cpu")
    gpu = load_backbone(name, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    x = torch.rand(2, 3, cpu.image_size, cpu.image_size)
    a = cpu.extract(x)
    b = gpu.extract(x.cuda()).cpu()
    tol = 1e-4 if name == "builtin" else 3e-2  # builtin runs in fp32 even under autocast
    assert ((b - a).norm() / a.norm()) < tol
