"""Guides: coefficients, training lowers the loss, EMA, persistence; scoring maths."""

import math

import pytest
import torch

from spg_core.config import GuideConfig
from spg_core.errors import SPGError
from spg_core.guides import SATURATED, GuideBatch, GuideSet, dice_loss, focal_loss, topk_mask, train_guides
from spg_core.pipeline import auxiliary_fit
from spg_core.scoring import cosine_logits, image_scores, patch_probabilities, upsample


def _toy_problem(n_img=24, grid=(6, 6), d=16, m=64, seed=0):
    """Tokens near atom 0 where the mask is on, near atom 1 elsewhere; a dictionary holding both."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(d, m, generator=g), dim=0)
    h, w = grid
    size = 24
    masks = torch.zeros(n_img, size, size)
    tokens = torch.empty(n_img, h * w, d)
    for i in range(n_img):
        patch_mask = torch.zeros(h, w)
        if i % 2:
            y, x = torch.randint(0, h - 2, (2,), generator=g).tolist()
            patch_mask[y : y + 2, x : x + 2] = 1
        masks[i] = torch.nn.functional.interpolate(patch_mask[None, None], size=(size, size), mode="nearest")[0, 0]
        base = torch.where(patch_mask.flatten()[:, None] > 0, dictionary[:, 0], dictionary[:, 1])
        tokens[i] = base + 0.3 * torch.randn(h * w, d, generator=g)
    return dictionary, tokens, masks, grid


def test_relu_and_topk_coefficients():
    pair = GuideSet(10, "relu_l1")
    with torch.no_grad():
        pair.theta_ema.copy_(torch.tensor([[-1.0, 2, 0, 3, -2, 1, 0, 0, 0, 0]] * 2))
    assert (pair.coefficients() >= 0).all()
    assert pair.active_atoms()[0].tolist() == [1, 3, 5]
    t = torch.tensor([[0.1, 0.5, 0.3, 0.9]])
    torch.testing.assert_close(topk_mask(t, 2), torch.tensor([[0.0, 0.5, 0.0, 0.9]]))
    tk = GuideSet(4, "topk", topk=1)
    with torch.no_grad():
        tk.theta_ema.copy_(torch.tensor([[0.1, 0.5, 0.3, 0.9], [0.7, 0.1, 0.1, 0.1]]))
    assert (tk.coefficients() != 0).sum().item() == 2


def test_guide_vectors_are_dictionary_combinations():
    d = torch.randn(8, 5)
    pair = GuideSet(5)
    g = pair.guide_vectors(d)
    torch.testing.assert_close(g[1], d @ torch.relu(pair.theta_ema[1]))


def test_training_lowers_loss_and_ema_differs_from_raw():
    dictionary, tokens, masks, grid = _toy_problem()
    cfg = GuideConfig(epochs=15, batch_images=4, lr=2e-2, l1=1e-4)
    pair, history = train_guides(
        dictionary,
        lambda idx: GuideBatch(tokens[idx], masks[idx], (masks[idx].flatten(1).amax(1) > 0).long()),
        len(tokens),
        grid,
        cfg,
        device=torch.device("cpu"),
        progress=False,
    )
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    assert not torch.allclose(pair.theta_ema, pair.theta.detach())
    # The learned anomaly guide points at the anomaly atom more than the normal guide does.
    c = pair.coefficients()
    assert c[1, 0] > c[0, 0]
    assert c[0, 1] > c[1, 1]


def test_l1_prunes_atoms():
    dictionary, tokens, masks, grid = _toy_problem()
    counts = []
    for l1 in (0.0, 5e-2):
        cfg = GuideConfig(epochs=10, batch_images=4, lr=2e-2, l1=l1)
        pair, _ = train_guides(
            dictionary,
            lambda idx: GuideBatch(tokens[idx], masks[idx], (masks[idx].flatten(1).amax(1) > 0).long()),
            len(tokens),
            grid,
            cfg,
            device=torch.device("cpu"),
            progress=False,
        )
        counts.append(sum(len(a) for a in pair.active_atoms()))
    assert counts[1] < counts[0]


def test_save_load_round_trip_is_exact(tmp_path):
    pair = GuideSet(32, "topk", topk=5, seed=4)
    with torch.no_grad():
        pair.theta.normal_()
        pair.update_ema(0.999)
    path = tmp_path / "g.safetensors"
    pair.save(str(path))
    loaded, _ = GuideSet.load(str(path), expect_width=32)
    assert torch.equal(loaded.theta_ema, pair.theta_ema)
    assert torch.equal(loaded.theta.detach(), pair.theta.detach())
    assert loaded.variant == "topk" and loaded.topk == 5
    with pytest.raises(SPGError, match="different SAE or backbone"):
        GuideSet.load(str(path), expect_width=64)


def test_focal_and_dice_reference_values():
    p = torch.tensor([[[0.9, 0.2]]])
    t = torch.tensor([[[1.0, 0.0]]])
    expected = (-(0.1**2) * math.log(0.9) - (0.2**2) * math.log(0.8)) / 2
    assert focal_loss(torch.logit(p), t).item() == pytest.approx(expected, rel=1e-5)
    assert dice_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(1 - t, t).item() == pytest.approx(1 - 1 / 3, rel=1e-5)


def test_focal_keeps_its_gradient_where_the_map_saturates():
    """A missed defect at P ~ 1e-11 must still pull its logit up (a clamped-probability focal
    loss gives exactly zero gradient there, which froze guide training)."""
    logits = torch.tensor([[[-25.0, -25.0]]], requires_grad=True)
    focal_loss(logits, torch.tensor([[[1.0, 0.0]]])).backward()
    assert logits.grad[0, 0, 0] < -0.1  # the missed positive is pushed up, hard
    assert abs(float(logits.grad[0, 0, 1])) < 1e-9  # the true negative is left alone


def test_batch_dice_does_not_demand_zero_maps_on_good_images():
    """Per-image Dice charges a good image (empty mask) almost fully for any diffuse P; over the
    batch, the same P costs in proportion to its area against the anomalous image's overlap."""
    masks = torch.zeros(2, 16, 16)
    masks[0, 4:8, 4:8] = 1  # one anomalous image, one good image
    p = masks * 0.9 + 0.01  # good detection, faint background everywhere
    per_image = dice_loss(p, masks, reduction="image").item()
    batch = dice_loss(p, masks, reduction="batch").item()
    assert per_image > 0.35  # the good image alone costs 1 - 1/(2.56 + 1) = 0.72
    assert batch < 0.2


def test_scoring_maths():
    f = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert cosine_logits(f, torch.tensor([0.0, 5.0])).tolist() == [[0.0, 1.0]]
    l_n, l_a = torch.tensor([0.2]), torch.tensor([0.5])
    softmax = torch.softmax(torch.stack([l_n, l_a]) / 0.07, dim=0)[1]
    torch.testing.assert_close(patch_probabilities(l_n, l_a, 0.07), softmax)
    maps = upsample(torch.arange(4.0).view(1, 4), (2, 2), 8)
    assert maps.shape == (1, 8, 8)
    assert maps[0, 0, 0] == 0 and maps[0, -1, -1] == 3
    m = torch.rand(3, 8, 8)
    torch.testing.assert_close(image_scores(m, "max"), m.flatten(1).max(1).values)
    torch.testing.assert_close(image_scores(m, "mean"), m.flatten(1).mean(1))
    # log-sum-exp interpolates: close to max for tiny T, close to mean for huge T.
    torch.testing.assert_close(image_scores(m, "lse", 1e-4), m.flatten(1).max(1).values, atol=2e-3, rtol=0)
    torch.testing.assert_close(image_scores(m, "lse", 1e4), m.flatten(1).mean(1), atol=1e-4, rtol=0)
    lse = image_scores(m, "lse", 0.1)
    assert (lse <= m.flatten(1).max(1).values + 1e-6).all() and (lse >= m.flatten(1).mean(1) - 1e-6).all()


class _AuxBatches:
    """A training batch source for auxiliary_fit: 2 images on a 2 x 2 grid, 8 px."""

    def __init__(self):
        e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
        self._tokens = torch.stack([e2.expand(4, 3).clone() for _ in range(2)])  # all normal-looking
        self._tokens[0, 0] = e1  # one defect patch
        self._masks = torch.zeros(2, 8, 8)
        self._masks[0, :4, :4] = 1  # its mask

    def get_batch(self, idx):
        return GuideBatch(self._tokens[idx], self._masks[idx], torch.tensor([1, 0])[idx])


def test_auxiliary_fit_reports_separation_and_calibration():
    e1, e2 = torch.eye(3)[0], torch.eye(3)[1]
    cpu = torch.device("cpu")
    good = auxiliary_fit(_AuxBatches().get_batch, 2, (2, 2), torch.stack([e2, e1]), 0.07, cpu)
    assert good["patch_auroc"] == 1.0 and good["defect_patches"] == 1 and good["normal_patches"] == 7
    assert good["p_defect_median"] > 0.99 and good["p_normal_q99"] < 0.01
    # An anomaly guide that points away from everything: p ~ 0 on the defect too (the saturated collapse).
    collapsed = auxiliary_fit(_AuxBatches().get_batch, 2, (2, 2), torch.stack([e1 + e2, -e1 - e2]), 0.07, cpu)
    assert collapsed["p_defect_median"] < SATURATED and collapsed["defect_patches_flagged"] == 0.0
