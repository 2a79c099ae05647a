"""SPG Stage 2: sparse-projected guides and their training.

Two forms (GuideConfig.form):

pair (studio): a normal and an anomaly guide,
    c_n = ReLU(theta_n), c_a = ReLU(theta_a)     (or TopK_K(theta) in the appendix variant)
    g_n = W_dec c_n,     g_a = W_dec c_a
    L   = Focal(P, mask) + Dice(P, mask) + lambda (|c_n|_1 + |c_a|_1)

official (riips/SPG `src/pipelines/guide_sae_pipeline.py`): four guides, theta `[4, M]`
with rows global normal, global anomaly, local normal, local anomaly, init 0.1 + 0.01 N(0, 1);
    (p_n, p_a) = softmax(cos(f, g_local) / tau), both upsampled bilinearly to S
    L = Focal([p_n, p_a], mask) + Dice(p_a, mask) + Dice(p_n, 1 - mask)
        + CE(cos(cls, g_global), label) + lambda * mean over the 4 guides of |c|_1
and an EMA that copies theta at its first update (torch AveragedModel).

Either way dead atoms of the SAE (its mask) get coefficient 0, only theta trains,
and the EMA of theta is what is evaluated and saved. `coefficients()` always gives
the local (normal, anomaly) pair, which is what maps, atoms and the dashboard use.

The `free` variant is the no-dictionary ablation: the guides are learned
directly in R^D (dictionary = identity, no sign constraint, no L1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import train_checkpoint
from .atomic import load_tensors, save_tensors
from .config import GuideConfig
from .errors import SPGError
from .official_order import epoch_order, guide_init
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
    fix = (
        "`--dice batch`"
        if cfg.get("dice", "image") == "image"
        else f"more `--guide-epochs` (this run: {cfg.get('epochs', '?')}) or a higher `--guide-lr`"
    )
    return (
        f"the guides are saturated (median p(anomaly) {fit['p_defect_median']:.1e} on the auxiliary "
        "set's own defect patches): maps still rank, but their values mean little as thresholds; "
        f"re-train them with `spg train-guides --run DIR` and {fix}"
    )


def topk_mask(theta: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of each row of `[G, M]`, zero the rest."""
    k = min(k, theta.shape[-1])
    idx = theta.topk(k, dim=-1).indices
    return torch.zeros_like(theta).scatter(-1, idx, theta.gather(-1, idx))


FORMS = ("pair", "official")
OFFICIAL_ROWS = ("global_normal", "global_anomaly", "local_normal", "local_anomaly")


class GuideSet(nn.Module):
    """Guide coefficients: theta `[2, M]` (pair: normal, anomaly) or `[4, M]` (official:
    global normal, global anomaly, local normal, local anomaly), with an optional dead-atom
    mask `[M]` (True = dead, coefficient forced to 0)."""

    def __init__(
        self,
        width: int,
        variant: str = "relu_l1",
        *,
        topk: int = 64,
        init_scale: float = 0.01,
        seed: int = 0,
        form: str = "pair",
        dead: torch.Tensor | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise SPGError(f"unknown guide variant {variant!r}", fix=f"use one of {', '.join(VARIANTS)}")
        if form not in FORMS or (form == "official" and variant == "free"):
            raise SPGError(
                f"unknown guide form {form!r} for variant {variant!r}",
                fix=f"use one of {', '.join(FORMS)} (free guides: pair only)",
            )
        self.width, self.variant, self.topk, self.form = width, variant, topk, form
        gen = torch.Generator().manual_seed(seed)
        if form == "official":
            theta = init_scale + 0.01 * torch.randn(4, width, generator=gen)
        elif variant == "free":
            theta = torch.randn(2, width, generator=gen) * init_scale
        else:
            # Small positive values: every atom starts active and L1 / TopK prunes.
            theta = torch.rand(2, width, generator=gen) * init_scale
        self.theta = nn.Parameter(theta)
        self.register_buffer("theta_ema", theta.clone())
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self.has_dead_mask = dead is not None and variant != "free"
        live = torch.ones(width) if not self.has_dead_mask else (~dead.bool().cpu()).float()
        self.register_buffer("live", live)

    @property
    def local_rows(self) -> slice:
        """Rows of theta holding the local (normal, anomaly) guides."""
        return slice(2, 4) if self.form == "official" else slice(0, 2)

    def all_coefficients(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """`[G, M]` coefficients of every guide (from the EMA unless `theta` is given)."""
        theta = self.theta_ema if theta is None else theta
        if self.variant == "free":
            return theta
        c = torch.relu(theta) * self.live.to(theta)
        if self.variant == "topk":
            if self.form == "official":  # straight-through: the forward keeps the top K, all get gradients
                return c + (topk_mask(c, self.topk) - c).detach()
            return topk_mask(c, self.topk)
        return c

    def coefficients(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """`[2, M]` non-negative sparse coefficients c of the local (normal, anomaly) guides."""
        return self.all_coefficients(theta)[self.local_rows]

    def global_coefficients(self, theta: torch.Tensor | None = None) -> torch.Tensor | None:
        """`[2, M]` coefficients of the global (normal, anomaly) guides; None for the pair form."""
        return self.all_coefficients(theta)[:2] if self.form == "official" else None

    def guide_vectors(self, dictionary: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """Dictionary `[D, M]` -> local guide vectors `[2, D]` (g_n, g_a)."""
        return (dictionary.float() @ self.coefficients(theta).t().float()).t()

    def global_vectors(self, dictionary: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor | None:
        """Dictionary `[D, M]` -> global guide vectors `[2, D]`; None for the pair form."""
        c = self.global_coefficients(theta)
        return None if c is None else (dictionary.float() @ c.t().float()).t()

    def active_atoms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of non-zero EMA coefficients of the local guides (A_n, A_a)."""
        c = self.coefficients()
        return c[0].nonzero().flatten(), c[1].nonzero().flatten()

    @torch.no_grad()
    def update_ema(self, decay: float, start: int = 0) -> None:
        """Count a step; from step `start` on (before it the EMA keeps its value: the initial theta,
        as the official trainer's `ema.warmup_steps`) update the EMA. Official form: torch
        AveragedModel's EMA, whose first update copies theta, then ema = decay * ema + (1 - decay)
        * theta. Pair form: the usual warm-up, min(decay, (1+t)/(10+t)), since with a small
        auxiliary set a flat 0.999 would keep the EMA near the random init for thousands of steps."""
        t = int(self.ema_steps) - start
        if t < 0:
            self.ema_steps += 1
            return
        if self.form == "official":
            d = 0.0 if t == 0 else decay
        else:
            d = min(decay, (1 + t) / (10 + t))
        self.theta_ema.mul_(d).add_(self.theta.detach(), alpha=1 - d)
        self.ema_steps += 1

    # -- persistence -----------------------------------------------------------------
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        meta = {
            "config": {"width": self.width, "variant": self.variant, "topk": self.topk, "form": self.form},
            **(extra or {}),
        }
        tensors = {"theta_raw": self.theta.detach(), "ema_steps": self.ema_steps}
        if self.form == "official":
            tensors["theta"] = self.theta_ema
        else:
            tensors.update(theta_n=self.theta_ema[0], theta_a=self.theta_ema[1])
        if self.has_dead_mask:
            tensors["dead_atoms"] = (self.live == 0).to(torch.uint8)
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str, *, expect_width: int | None = None) -> tuple[GuideSet, dict[str, Any]]:
        tensors, meta = load_tensors(path, what="guide file")
        cfg = meta.get("config")
        form = cfg.get("form", "pair") if isinstance(cfg, dict) else "pair"
        key = "theta" if form == "official" else "theta_a"
        if not isinstance(cfg, dict) or "width" not in cfg or key not in tensors:
            raise SPGError(
                "guide file has no config metadata or coefficients",
                path=path,
                fix="re-train it with `spg train-guides`",
            )
        if expect_width is not None and cfg["width"] != expect_width:
            raise SPGError(
                f"guides have {cfg['width']} coefficients but the dictionary has {expect_width} atoms "
                "(they come from a different SAE or backbone)",
                path=path,
                fix="use the guides trained with this run's SAE, or re-train with `spg train-guides`",
            )
        dead = tensors.get("dead_atoms")
        pair = cls(
            cfg["width"],
            cfg["variant"],
            topk=cfg.get("topk", 64),
            form=form,
            dead=None if dead is None else dead.bool(),
        )
        ema = tensors["theta"] if form == "official" else torch.stack([tensors["theta_n"], tensors["theta_a"]])
        if tuple(ema.shape) != tuple(pair.theta.shape):
            raise SPGError(
                f"guide coefficients have shape {list(ema.shape)}, expected {list(pair.theta.shape)}",
                path=path,
                fix="the file is damaged: re-train it with `spg train-guides`",
            )
        with torch.no_grad():
            pair.theta_ema.copy_(ema)
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


def official_focal_loss(
    probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5
) -> torch.Tensor:
    """The official focal loss on 2-class probabilities `[B, 2, H, W]` (channel 0 normal, 1
    anomaly) against a {0, 1} mask `[B, H, W]`, mean over pixels: the one-hot target is clamped
    to [smooth, 1 - smooth], p_t = <one-hot, p> + smooth, loss = -(1 - p_t)^gamma log p_t."""
    target = target.long()
    one_hot = torch.stack([1 - target, target], dim=1).float().clamp(smooth, 1 - smooth)
    pt = (one_hot * probs).sum(1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


@dataclass
class GuideBatch:
    """One training batch: tokens `[B, N, D]`, masks `[B, S, S]` in {0, 1}, image labels `[B]`,
    and the layer's CLS tokens `[B, D]` (None when the backbone has none)."""

    tokens: torch.Tensor
    masks: torch.Tensor
    labels: torch.Tensor
    cls: torch.Tensor | None = None

    def to(self, device: torch.device) -> GuideBatch:
        return GuideBatch(
            self.tokens.to(device),
            self.masks.to(device),
            self.labels.to(device),
            None if self.cls is None else self.cls.to(device),
        )


def guide_loss(
    pair: GuideSet, dictionary: torch.Tensor, batch: GuideBatch, cfg: GuideConfig, grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Loss terms for one batch (raw theta, not the EMA), in the pair's form."""
    if pair.form == "official":
        return official_guide_loss(pair, dictionary, batch, cfg, grid)
    return pair_guide_loss(pair, dictionary, batch.tokens, batch.masks, cfg, grid)


def pair_guide_loss(
    pair: GuideSet,
    dictionary: torch.Tensor,
    tokens: torch.Tensor,
    masks: torch.Tensor,
    cfg: GuideConfig,
    grid: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Studio loss terms: tokens `[B, N, D]`, masks `[B, S, S]`.

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
    zero = torch.zeros((), device=tokens.device)
    return {"loss": focal + dice + l1, "focal": focal, "dice": dice, "l1": l1, "global_ce": zero}


def official_guide_loss(
    pair: GuideSet, dictionary: torch.Tensor, batch: GuideBatch, cfg: GuideConfig, grid: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Official loss terms: focal on the upsampled (p_n, p_a) + Dice(p_a, mask) + Dice(p_n, 1 - mask)
    + CE of the CLS token's raw cosines with the global guides + lambda * mean_g |c_g|_1."""
    c = pair.all_coefficients(pair.theta)  # [4, M]
    g = (dictionary.float() @ c.t().float()).t()  # [4, D]
    local = cosine_logits(batch.tokens, g[2:])  # [B, N, 2]
    probs = torch.softmax(local / cfg.tau, dim=-1)
    size = batch.masks.shape[-1]
    maps = torch.stack([upsample(probs[..., i], grid, size) for i in range(2)], dim=1)  # [B, 2, S, S]
    focal = official_focal_loss(maps, batch.masks, cfg.focal_gamma)
    dice = dice_loss(maps[:, 1], batch.masks, reduction="image") + dice_loss(
        maps[:, 0], 1 - batch.masks, reduction="image"
    )
    if batch.cls is not None:
        global_ce = F.cross_entropy(cosine_logits(batch.cls, g[:2]), batch.labels.long())
    else:  # no CLS token (SigLIP): the official code feeds zeros, whose cosines carry no gradient
        global_ce = torch.zeros((), device=batch.tokens.device)
    l1 = cfg.l1 * c.abs().sum(-1).mean() if pair.variant == "relu_l1" else torch.zeros((), device=c.device)
    return {"loss": focal + dice + global_ce + l1, "focal": focal, "dice": dice, "l1": l1, "global_ce": global_ce}


def train_guides(
    dictionary: torch.Tensor,
    get_batch: Callable[[torch.Tensor], GuideBatch],
    num_images: int,
    grid: tuple[int, int],
    cfg: GuideConfig,
    *,
    device: torch.device,
    progress: bool = True,
    dead: torch.Tensor | None = None,
    checkpoint: Path | None = None,
    data_key: Any = None,
) -> tuple[GuideSet, list[dict[str, float]]]:
    """Train guides of form `cfg.form`. `get_batch(indices)` returns a GuideBatch; `dead` `[M]`
    is the SAE's dead-atom mask (those coefficients stay 0). `cfg.order` "official": the initial
    theta and each epoch's image order as the official trainer draws them (official_order.py).
    `checkpoint`: a file written at each epoch's end and resumed from when it matches these
    settings, the dictionary and `data_key`; the caller deletes it when done.

    Returns the guides (their EMA is what counts) and per-epoch history.
    """
    dim, width = dictionary.shape
    pair = GuideSet(
        width, cfg.variant, topk=cfg.topk, init_scale=cfg.init_scale, seed=cfg.seed, form=cfg.form, dead=dead
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.order == "official":
        draw, gen = guide_init(cfg.seed, dim, width)
        with torch.no_grad():
            pair.theta.copy_(draw[: pair.theta.shape[0]] * 0.01 + cfg.init_scale)
            pair.theta_ema.copy_(pair.theta)
    pair = pair.to(device)
    dictionary = dictionary.to(device).float()
    opt = torch.optim.Adam([pair.theta], lr=cfg.lr, betas=tuple(cfg.adam_betas))
    steps_per_epoch = math.ceil(num_images / cfg.batch_images)
    history: list[dict[str, float]] = []
    key = train_checkpoint.fingerprint(asdict(cfg), num_images, data_key, dictionary.sum().item(), dead is None)
    start = 0
    resumed = train_checkpoint.resume(checkpoint, opt, pair, "pair", key=key, stage="guide training", epochs=cfg.epochs)
    if resumed is not None:
        state, start, history = resumed
        gen.set_state(state["rng_order"])
    bar = tqdm(
        total=cfg.epochs * steps_per_epoch,
        initial=start * steps_per_epoch,
        desc="train guides",
        unit="step",
        disable=not progress,
    )
    for epoch in range(start, cfg.epochs):
        order = epoch_order(gen, num_images) if cfg.order == "official" else torch.randperm(num_images, generator=gen)
        sums = {"loss": 0.0, "focal": 0.0, "dice": 0.0, "l1": 0.0, "global_ce": 0.0}
        for lo in range(0, num_images, cfg.batch_images):
            batch = get_batch(order[lo : lo + cfg.batch_images]).to(device)
            terms = guide_loss(pair, dictionary, batch, cfg, grid)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            pair.update_ema(cfg.ema_decay, cfg.ema_start)
            for k in sums:
                sums[k] += float(terms[k].detach()) / steps_per_epoch
            bar.update(1)
        a_n, a_a = pair.active_atoms()
        history.append({"epoch": epoch, **sums, "active_normal": len(a_n), "active_anomaly": len(a_a)})
        bar.set_postfix(loss=f"{sums['loss']:.4f}", active=len(a_n) + len(a_a))
        if checkpoint is not None:
            state = {f"pair.{k}": v for k, v in pair.state_dict().items()}
            state["rng_order"] = gen.get_state()
            train_checkpoint.save(checkpoint, state, opt, epochs_done=epoch + 1, history=history, key=key)
    bar.close()
    return pair, history
