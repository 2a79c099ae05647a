"""TopK SAE: sparsity, unit-norm atoms, training progress, exact persistence, bad files."""

import pytest
import torch

from spg_core.config import SAEConfig
from spg_core.errors import SPGError
from spg_core.sae import TopKSAE
from spg_core.sae_train import evaluate_sae, train_sae


def _sparse_tokens(n=4096, d=24, atoms=64, active=3, seed=0):
    """Tokens that really are sparse combinations of a hidden dictionary, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d, generator=g), dim=1)
    idx = torch.stack([torch.randperm(atoms, generator=g)[:active] for _ in range(n)])
    coef = torch.rand(n, active, generator=g) * 2 + 0.5
    return torch.einsum("na,nad->nd", coef, dictionary[idx]) + 3.0


def test_topk_leaves_exactly_k_candidates_and_nonnegative():
    sae = TopKSAE(16, 128, 7)
    f = torch.randn(50, 16)
    s = sae.encode_dense(f)
    assert s.shape == (50, 128)
    assert (s >= 0).all()
    # Exactly k candidates per token; ReLU may zero some of them, never adds any.
    code = sae.encode(f)
    assert code.indices.shape == (50, 7)
    assert ((s != 0).sum(1) <= 7).all()
    z = sae.pre_activation(f)
    kth = z.topk(7, dim=1).values[:, -1:]
    expected = torch.where(z >= kth, torch.relu(z), torch.zeros_like(z))
    torch.testing.assert_close(s, expected)


def test_topk_exactly_k_nonzeros_when_preactivations_positive():
    sae = TopKSAE(8, 64, 5)
    with torch.no_grad():
        sae.b_enc.fill_(100.0)  # every pre-activation positive: ReLU keeps all k
    s = sae.encode_dense(torch.randn(30, 8))
    assert ((s != 0).sum(1) == 5).all()


def test_sparse_and_dense_decode_agree():
    sae = TopKSAE(32, 256, 16)
    f = torch.randn(40, 32)
    code = sae.encode(f)
    torch.testing.assert_close(sae.decode(code), sae.decode_dense(code.dense(256)), rtol=1e-5, atol=1e-5)


def test_training_keeps_unit_norm_atoms_and_lowers_fvu():
    tokens = _sparse_tokens()
    cfg = SAEConfig(width=128, k=8, epochs=8, batch_images=4, lr=3e-3)
    untrained = TopKSAE(tokens.shape[1], 128, 8)
    untrained.init_bias(tokens)
    fvu_before = evaluate_sae(untrained, tokens)["fvu"]
    sae, history = train_sae(tokens, cfg, tokens_per_image=64, device=torch.device("cpu"), progress=False)
    norms = sae.W_dec.detach().norm(dim=0)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-5, rtol=0)
    final = history[-1]
    assert final["fvu"] < 0.5 * fvu_before
    assert final["fvu"] < 0.3
    assert 0.0 <= final["dead_fraction"] <= 1.0
    losses = [h["loss"] for h in history if h["epoch"] != "final"]
    assert losses[-1] < losses[0]
    # b_dec was pre-centred at the data mean, not left at zero.
    assert sae.b_dec.detach().mean().item() > 1.0


def test_save_load_round_trip_is_exact(tmp_path):
    sae = TopKSAE(12, 48, 4, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    path = tmp_path / "sae.safetensors"
    sae.save(str(path), {"backbone": {"backbone": "builtin"}})
    loaded, meta = TopKSAE.load(str(path))
    for k, v in sae.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert meta["backbone"]["backbone"] == "builtin"
    assert (loaded.dim, loaded.width, loaded.k) == (12, 48, 4)


def test_dimension_mismatch_names_the_file(tmp_path):
    path = tmp_path / "sae.safetensors"
    TopKSAE(12, 48, 4).save(str(path))
    with pytest.raises(SPGError, match="12-dim tokens but this backbone gives 1024") as exc:
        TopKSAE.load(str(path), expect_dim=1024)
    assert str(path) in str(exc.value)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = tmp_path / "sae.safetensors"
    TopKSAE(12, 48, 4).save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SPGError, match="truncated") as exc:
        TopKSAE.load(str(path))
    assert str(path) in str(exc.value)


def test_k_larger_than_width_is_rejected():
    with pytest.raises(SPGError, match="k=70"):
        TopKSAE(8, 64, 70)
