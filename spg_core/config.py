"""Configuration dataclasses for every stage, with the paper's defaults.

Every artifact is saved beside the config that produced it (`to_dict`), so a
result can always be traced to the exact hyper-parameters used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class SAEConfig:
    """Stage 1: TopK sparse autoencoder (SPG_METHOD.md, Stage 1)."""

    width: int = 4096            # M, dictionary width
    k: int = 64                  # TopK sparsity (did not survive extraction; ours)
    lr: float = 1e-3             # Adam
    batch_images: int = 16       # batch of 16 images' tokens
    epochs: int = 50
    init_bias: Literal["mean", "median"] = "mean"   # b_dec initialisation (biased SAE only)
    dead_after_tokens: int = 1_000_000              # history statistic: a latent silent this long counts dead
    seed: int = 0
    # -- what the official code does differently (protocols.OFFICIAL sets these) --
    bias: bool = True            # encoder and decoder biases (official: none)
    adam_betas: tuple[float, float] = (0.9, 0.999)  # official (0.5, 0.999)
    auxk: int = 0                # k_aux of the AuxK loss; 0 = off (official 512)
    auxk_coef: float = 1 / 32    # AuxK coefficient
    auxk_dead_tokens: int = 10_000_000   # AuxK: dead after 10M / tokens_per_step silent steps
    auxk_threshold: float = 1e-3         # AuxK: "fired" means a code value above this


@dataclass
class GuideConfig:
    """Stage 2: sparse-projected guides (SPG_METHOD.md, Stage 2)."""

    variant: Literal["relu_l1", "topk"] = "relu_l1"
    l1: float = 1e-3             # lambda; calibrated, not the paper's (lost)
    topk: int = 64               # K per guide for the TopK_K variant
    tau: float = 0.07            # softmax temperature
    focal_gamma: float = 2.0
    dice: Literal["batch", "image"] = "batch"   # Dice over the batch (see guides.dice_loss) or per image
    ema_decay: float = 0.999
    lr: float = 1e-3
    batch_images: int = 16
    epochs: int = 20
    init_scale: float = 0.01     # theta init: small positive so every atom starts active
    seed: int = 0
    # -- official four-guide form (protocols.OFFICIAL sets these) --
    form: Literal["pair", "official"] = "pair"   # 2 local guides (studio) or 4 (global + local) guides
    adam_betas: tuple[float, float] = (0.9, 0.999)  # official (0.5, 0.999)


@dataclass
class ScoreConfig:
    """Anomaly map and image score (SPG_METHOD.md, scoring)."""

    aggregation: Literal["max", "mean", "lse"] = "max"
    lse_temperature: float = 0.1   # T for log-sum-exp pooling
    smoothing_sigma: float = 0.0   # Gaussian smoothing of maps before pixel metrics (0 = off)
    image_score: Literal["map", "smoothed_map", "cls"] = "map"   # map pooling, pooling of the smoothed
    # map (official: max of the sigma-4 map), or the CLS token's global-guide softmax (official guides only)


@dataclass
class RunConfig:
    """One aux -> target experiment."""

    aux: str = "synthetic-a"
    target: str = "synthetic-b"
    backbone: str = "dinov3-vitl16"
    weights: str | None = None     # hub id, local directory or checkpoint file; None = registry default
    method: Literal["spg", "free_guides", "random_dict"] = "spg"
    device: str = "auto"
    protocol: str = "studio"       # protocols.PROTOCOLS; a run without the key is a studio run
    sae: SAEConfig = field(default_factory=SAEConfig)
    guides: GuideConfig = field(default_factory=GuideConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        sae = SAEConfig(**_tuples(_known(SAEConfig, d.pop("sae", {}))))
        guides = GuideConfig(**_tuples(_known(GuideConfig, d.pop("guides", {}))))
        score = ScoreConfig(**_known(ScoreConfig, d.pop("score", {})))
        return cls(**_known(cls, d), sae=sae, guides=guides, score=score)


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples (Adam betas) into lists: turn them back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {"sae", "guides", "score"}
    return {k: v for k, v in d.items() if k in names}
