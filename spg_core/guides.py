"""SPG Stage 2: sparse-projected guides and their training.

    c_n = ReLU(theta_n), c_a = ReLU(theta_a)     (or TopK_K(theta) in the appendix variant)
    g_n = W_dec c_n,     g_a = W_dec c_a
    L   = Focal(P, mask) + Dice(P, mask) + lambda (|c_n|_1 + |c_a|_1)

Only theta trains; the SAE dictionary and the backbone are frozen. An EMA of
theta is what is evaluated and saved.

The `free` variant is the no-dictionary ablation: the guides are learned
directly in R^D (dictionary = identity, no sign constraint, no L1).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .atomic import load_tensors, save_tensors
from .config import GuideConfig
from .errors import SPGError
from .scoring import cosine_logits, upsample

VARIANTS = ("relu_l1", "topk", "free")

# Median p(anomaly) on the auxiliary set's own defect patches below which trained guides count
# as saturated (logit < -9): maps then rank at best and their values are useless as thresholds.
# The per-image-Dice collapse sat near 1e-7; healthy builtin runs sit near 1e-2.
SATURATED = 1e-4


def saturation_note(fit: dict[str, Any] | None, cfg: dict[str, Any]) -> str | None:
    """The warning for saturated guides, with the fix that fits their config; None when healthy.

    `fit`: the `aux_fit` record of guides.json; `cfg`: its guide config (GuideConfig fields).
    """
    if not fit or fit.get("p_defect_median", 1.0) >= SATURATED:
        return None
    fix = ("`--dice batch`" if cfg.get("dice", "image") == "image"
           else f"more `--guide-epochs` (this run: {cfg.get('epochs', '?')}) or a higher `--guide-lr`")
    return (f"the guides are saturated (median p(anomaly) {fit['p_defect_median']:.1e} on the auxiliary "
            "set's own defect patches): maps still rank, but their values mean little as thresholds; "
            f"re-train them with `spg train-guides --run DIR` and {fix}")


def topk_mask(theta: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of `[G, M]`, zero the rest."""
    k = min(k, theta.shape[-1])
    idx = theta.topk(k, dim=-1).indices
    return torch.zeros_like(theta).scatter(-1, idx, theta.gather(-1, idx))


class GuidePair(nn.Module):
    """Normal and anomaly guide coefficients: `theta` `[2, M]`, row 0 normal, row 1 anomaly."""

    def __init__(self, width: int, variant: str = "relu_l1", *, topk: int = 64,
                 init_scale: float = 0.01, seed: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise SPGError(f"unknown guide variant {variant!r}", fix=f"use one of {', '.join(VARIANTS)}")
        self.width, self.variant, self.topk = width, variant, topk
        gen = torch.Generator().manual_seed(seed)
        if variant == "free":
            theta = torch.randn(2, width, generator=gen) * init_scale
        else:
            # Small positive values: every atom starts active and L1 / TopK prunes.
            theta = torch.rand(2, width, generator=gen) * init_scale
        self.theta = nn.Parameter(theta)
        self.register_buffer("theta_ema", theta.clone())
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

    def coefficients(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """`[2, M]` non-negative sparse coefficients c (from the EMA unless `theta` is given)."""
        theta = self.theta_ema if theta is None else theta
        if self.variant == "relu_l1":
            return torch.relu(theta)
        if self.variant == "topk":
            return topk_mask(torch.relu(theta), self.topk)
        return theta

    def guide_vectors(self, dictionary: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Dictionary `[D, M]` -> guide vectors `[2, D]` (g_n, g_a)."""
        return (dictionary.float() @ self.coefficients(theta).t().float()).t()

    def active_atoms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of non-zero EMA coefficients (A_n, A_a)."""
        c = self.coefficients()
        return c[0].nonzero().flatten(), c[1].nonzero().flatten()

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """EMA with the usual warm-up, min(decay, (1+t)/(10+t)): with a small auxiliary set a
        flat 0.999 would keep the EMA near the random init for thousands of steps."""
        t = int(self.ema_steps)
        d = min(decay, (1 + t) / (10 + t))
        self.theta_ema.mul_(d).add_(self.theta.detach(), alpha=1 - d)
        self.ema_steps += 1

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        meta = {"config": {"width": self.width, "variant": self.variant, "topk": self.topk}, **(extra or {})}
        save_tensors(path, {"theta_n": self.theta_ema[0], "theta_a": self.theta_ema[1],
                            "theta_raw": self.theta.detach(), "ema_steps": self.ema_steps}, meta)

    @classmethod
    def load(cls, path: str, *, expect_width: int | None = None) -> tuple["GuidePair", dict[str, Any]]:
        tensors, meta = load_tensors(path, what="guide file")
        cfg = meta.get("config")
        if not isinstance(cfg, dict) or "width" not in cfg or "theta_a" not in tensors:
            raise SPGError("guide file has no config metadata or coefficients", path=path,
                           fix="re-train it with `spg train-guides`")
        if expect_width is not None and cfg["width"] != expect_width:
            raise SPGError(f"guides have {cfg['width']} coefficients but the dictionary has {expect_width} atoms "
                           "(they come from a different SAE or backbone)", path=path,
                           fix="use the guides trained with this run's SAE, or re-train with `spg train-guides`")
        pair = cls(cfg["width"], cfg["variant"], topk=cfg.get("topk", 64))
        with torch.no_grad():
            pair.theta_ema.copy_(torch.stack([tensors["theta_n"], tensors["theta_a"]]))
            pair.theta.copy_(tensors.get("theta_raw", pair.theta_ema))
            pair.ema_steps.copy_(tensors.get("ema_steps", torch.zeros((), dtype=torch.long)))
        return pair, meta


# -- losses -------------------------------------------------------------------------------

def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss of P = sigmoid(logits), mean over pixels. `logits`, `target`: `[B, H, W]`.

    Taken from logits with log-sigmoid, not from clamped probabilities: once the guides
    push P below a clamp, a clamped log has no gradient and the sigmoid's saturation
    hides the rest, so training stalls with P ~ 0 everywhere (seen: P < 1e-6 on every
    auxiliary pixel, masks included).
    """
    p = torch.sigmoid(logits)
    pos = -target * (1 - p).pow(gamma) * F.logsigmoid(logits)
    neg = -(1 - target) * p.pow(gamma) * F.logsigmoid(-logits)
    return (pos + neg).mean()


def dice_loss(p: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, reduction: str = "batch") -> torch.Tensor:
    """Soft Dice loss of maps `p` against masks, `[B, H, W]`.

    "batch" pools intersections and areas over the batch (one Dice per batch); "image"
    averages per-image Dice. Per image, a good image (empty mask) scores Dice 0 only when
    sum(P) ~ 0 exactly, 1 - 1/(sum P + 1) otherwise: with 65k pixels even P = 1e-4
    costs 0.87, a pull to P = 0 everywhere that the anomalous images cannot match.
    """
    dims = (0, 1, 2) if reduction == "batch" else (1, 2)
    inter = (p * target).sum(dims)
    denom = p.sum(dims) + target.sum(dims)
    return (1 - (2 * inter + smooth) / (denom + smooth)).mean()


def guide_loss(pair: GuidePair, dictionary: torch.Tensor, tokens: torch.Tensor, masks: torch.Tensor,
               cfg: GuideConfig, grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Loss terms for one batch: tokens `[B, N, D]`, masks `[B, S, S]` (raw theta, not the EMA).

    The map is the bilinear upsampling of the patch logits (l_a - l_n) / tau, through a
    sigmoid: the method's P upsamples probabilities, which is what evaluation does; for
    the loss, upsampling logits keeps the focal term finite and differentiable where P
    saturates, and the two agree wherever the logits vary smoothly across a patch.
    """
    g = pair.guide_vectors(dictionary, pair.theta)
    logits = (cosine_logits(tokens, g[1]) - cosine_logits(tokens, g[0])) / cfg.tau
    logit_maps = upsample(logits, grid, masks.shape[-1])
    focal = focal_loss(logit_maps, masks, cfg.focal_gamma)
    dice = dice_loss(torch.sigmoid(logit_maps), masks, reduction=cfg.dice)
    if pair.variant == "relu_l1":
        l1 = cfg.l1 * pair.coefficients(pair.theta).sum()
    else:
        l1 = torch.zeros((), device=tokens.device)
    return {"loss": focal + dice + l1, "focal": focal, "dice": dice, "l1": l1}


def train_guides(dictionary: torch.Tensor, get_batch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                 num_images: int, grid: tuple[int, int], cfg: GuideConfig, *,
                 device: torch.device, progress: bool = True) -> tuple[GuidePair, list[dict[str, float]]]:
    """Train a GuidePair. `get_batch(indices)` returns (tokens `[B, N, D]`, masks `[B, S, S]`).

    Returns the pair (its EMA is what counts) and per-epoch history.
    """
    variant = cfg.variant
    width = dictionary.shape[1]
    pair = GuidePair(width, variant, topk=cfg.topk, init_scale=cfg.init_scale, seed=cfg.seed).to(device)
    dictionary = dictionary.to(device).float()
    opt = torch.optim.Adam([pair.theta], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(num_images / cfg.batch_images)
    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc="train guides", unit="step", disable=not progress)
    for epoch in range(cfg.epochs):
        order = torch.randperm(num_images, generator=gen)
        sums = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "l1": 0.0}
        for start in range(0, num_images, cfg.batch_images):
            tokens, masks = get_batch(order[start:start + cfg.batch_images])
            terms = guide_loss(pair, dictionary, tokens.to(device), masks.to(device), cfg, grid)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            pair.update_ema(cfg.ema_decay)
            for k in sums:
                sums[k] += float(terms[k].detach()) / steps_per_epoch
            bar.update(1)
        a_n, a_a = pair.active_atoms()
        history.append({"epoch": epoch, **sums, "active_normal": len(a_n), "active_anomaly": len(a_a)})
        bar.set_postfix(loss=f"{sums['loss']:.4f}", active=len(a_n) + len(a_a))
    bar.close()
    return pair, history
