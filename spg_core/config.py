"""Configuration dataclasses for every stage, with the paper's defaults.

Every artifact is saved beside the config that produced it (`to_dict`), so a
result can always be traced to the exact hyper-parameters used.

Each field says what it is beside its default (`opt`: the help text, the command-line
flag where it differs from the field's name, whether it is a command-line option at
all, and the rule its value obeys). The `spg` options are generated from these fields
(options.py), and every config checks its values on construction (`validate`), so a bad
value from the command line, a config.json or Python code gets the same clear error.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import SPGError
from .memory import parse_size

OPTION = "spg_option"  # the key of a field's `Option` in its dataclass metadata


@dataclass(frozen=True)
class Rule:
    """A condition a field's value must meet, with the words that state it."""

    text: str
    holds: Callable[[Any], bool]


AT_LEAST_1 = Rule("1 or more", lambda v: v >= 1)
NON_NEGATIVE = Rule("0 or more", lambda v: v >= 0)
POSITIVE = Rule("above 0", lambda v: v > 0)
FRACTION = Rule("in [0, 1)", lambda v: 0 <= v < 1)
BETAS = Rule("in [0, 1) (both)", lambda v: all(0 <= b < 1 for b in v))


def _is_size(text: str) -> bool:
    try:
        parse_size(text)
    except SPGError:
        return False
    return True


SIZE = Rule("a size such as 512MB or 4GiB", _is_size)


@dataclass(frozen=True)
class Option:
    """A config field as the user sees it: help text, flag, and the rule its value obeys."""

    help: str
    flag: str | None = None  # None: --field-name
    cli: bool = True  # False: set only through config.json / Python (or a shared option)
    rule: Rule | None = None
    choices: tuple[str, ...] | None = None  # command-line choices, where narrower than the annotation's
    metavar: tuple[str, ...] | None = None  # names of a tuple's values in the help


def opt(
    help: str,
    *,
    flag: str | None = None,
    cli: bool = True,
    rule: Rule | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: tuple[str, ...] | None = None,
) -> dict[str, Option]:
    """Field metadata: `field(default=..., metadata=opt("what it is", flag="--x", rule=POSITIVE))`."""
    return {OPTION: Option(help, flag, cli, rule, choices, metavar)}


def option_of(f: dataclasses.Field) -> Option | None:
    return f.metadata.get(OPTION)


def flag_of(f: dataclasses.Field) -> str:
    """The field's command-line flag: its own, else --field-name."""
    option = option_of(f)
    return (option.flag if option and option.flag else None) or "--" + f.name.replace("_", "-")


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's fields (this module defers them as strings)."""
    return typing.get_type_hints(cls)


def _problem(kind: Any, value: Any) -> str | None:
    """Why `value` does not fit the annotation `kind`, or None if it fits."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return None if value is None and type(None) in args else _problem(non_optional(kind), value)
    if origin is Literal:
        return None if value in args else f"is not one of {', '.join(map(str, args))}"
    if origin is tuple:
        if not isinstance(value, (tuple, list)) or len(value) != len(args):
            return f"is not {len(args)} values"
        return next((p for k, v in zip(args, value) if (p := _problem(k, v))), None)
    if kind is bool:
        return None if isinstance(value, bool) else "is not true or false"
    if kind is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "is not a whole number"
    if kind is float:
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return "is not a number"
        return None if math.isfinite(value) else "is not a finite number"
    if kind is str:
        return None if isinstance(value, str) else "is not text"
    return None


def validate(cfg: Any) -> None:
    """Check every field of a config against its annotation and its rule: SPGError naming the
    field, its value and the fix. Nested configs check themselves."""
    section = getattr(cfg, "SECTION", "")
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            continue
        kind, option = field_types(type(cfg))[f.name], option_of(f)
        problem = _problem(kind, value)
        if problem is None and option and option.rule and value is not None and not option.rule.holds(value):
            problem = f"must be {option.rule.text}"
        if problem is not None:
            raise SPGError(
                f"{section + '.' if section else ''}{f.name} = {value!r} {problem}", fix=_fix(f, kind, option)
            )


def _fix(f: dataclasses.Field, kind: Any, option: Option | None) -> str:
    choices = (option.choices if option and option.cli else None) or literal_choices(kind)
    wanted = (
        f"one of {', '.join(choices)}"
        if choices
        else f"a value {option.rule.text}"
        if option and option.rule
        else f"a value of type {getattr(kind, '__name__', kind)}"
    )
    where = f"give {flag_of(f)} " if option and option.cli else f"set `{f.name}` in the run's config.json to "
    return where + wanted


def non_optional(kind: Any) -> Any:
    """`X` for an `X | None` annotation, else the annotation itself."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(kind) if a is not type(None))
    return kind


def literal_choices(kind: Any) -> tuple[str, ...] | None:
    """The values of a Literal annotation (also inside `X | None`), else None."""
    kind = non_optional(kind)
    return tuple(map(str, typing.get_args(kind))) if typing.get_origin(kind) is Literal else None


@dataclass
class SAEConfig:
    """Stage 1: TopK sparse autoencoder (SPG_METHOD.md, Stage 1)."""

    SECTION: ClassVar[str] = "sae"

    width: int = field(default=4096, metadata=opt("SAE dictionary width M", rule=AT_LEAST_1))
    k: int = field(
        default=64,
        metadata=opt(  # did not survive extraction; ours
            "SAE TopK k", rule=AT_LEAST_1
        ),
    )
    lr: float = field(default=1e-3, metadata=opt("SAE Adam learning rate", flag="--sae-lr", rule=POSITIVE))
    batch_images: int = field(
        default=16, metadata=opt("images' tokens per SAE step", flag="--sae-batch-images", rule=AT_LEAST_1)
    )
    epochs: int = field(default=50, metadata=opt("SAE training epochs", flag="--sae-epochs", rule=NON_NEGATIVE))
    init_bias: Literal["mean", "median"] = field(
        default="mean",
        metadata=opt(
            "initial decoder bias b_dec: the tokens' mean or median (biased SAE only)", flag="--sae-init-bias"
        ),
    )
    dead_after_tokens: int = field(
        default=1_000_000,
        metadata=opt("history statistic: a latent silent for this many tokens counts dead", rule=AT_LEAST_1),
    )
    seed: int = field(default=0, metadata=opt("SAE seed", cli=False))  # set with the guides' by --seed
    # -- what the official code does differently (protocols.OFFICIAL sets these) --
    bias: bool = field(
        default=True, metadata=opt("encoder and decoder biases (the official SAE has none)", flag="--sae-bias")
    )
    adam_betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata=opt("SAE Adam betas", flag="--sae-adam-betas", rule=BETAS, metavar=("B1", "B2"))
    )
    auxk: int = field(default=0, metadata=opt("k_aux of the AuxK loss (0 = off)", rule=NON_NEGATIVE))
    auxk_coef: float = field(default=1 / 32, metadata=opt("coefficient of the AuxK loss", rule=NON_NEGATIVE))
    auxk_dead_tokens: int = field(
        default=10_000_000,
        metadata=opt("AuxK: a latent is dead after this many tokens' worth of steps without firing", rule=AT_LEAST_1),
    )
    auxk_threshold: float = field(
        default=1e-3, metadata=opt("AuxK: a latent fires when its code value is above this", rule=NON_NEGATIVE)
    )
    order: Literal["studio", "official"] = field(
        default="studio",
        metadata=opt(  # sae_data.py
            "SAE batch order: studio (tokens shuffled one by one) or official (whole images in the official "
            "code's seeded image order)",
            flag="--sae-order",
        ),
    )
    shard: Literal["data", "latents"] = field(
        default="data",
        metadata=opt(  # docs/SCALING.md
            "under torchrun: data (each rank a slice of every batch) or latents (each rank M / N atoms of the "
            "studio-form SAE, every rank the whole batch)",
        ),
    )
    stream_window_shards: int = field(
        default=4,
        metadata=opt(  # token_stream.ShardStream
            "streamed SAE training: store shards shuffled together (fewer when --max-host-memory cannot hold them)",
            rule=AT_LEAST_1,
        ),
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.k > self.width:
            raise SPGError(
                f"sae.k = {self.k} is larger than the dictionary width sae.width = {self.width}",
                fix="choose --k no larger than --width",
            )


@dataclass
class GuideConfig:
    """Stage 2: sparse-projected guides (SPG_METHOD.md, Stage 2)."""

    SECTION: ClassVar[str] = "guides"

    # "free" is set by --method free_guides (guides in R^D), never chosen directly.
    variant: Literal["relu_l1", "topk", "free"] = field(
        default="relu_l1",
        metadata=opt("relu_l1 or topk (TopK_K per guide)", flag="--guide-variant", choices=("relu_l1", "topk")),
    )
    l1: float = field(
        default=1e-3,
        metadata=opt(  # calibrated, not the paper's (lost)
            "lambda of the L1 penalty", rule=NON_NEGATIVE
        ),
    )
    topk: int = field(
        default=64, metadata=opt("K per guide for --guide-variant topk", flag="--guide-topk", rule=AT_LEAST_1)
    )
    tau: float = field(default=0.07, metadata=opt("softmax temperature", rule=POSITIVE))
    focal_gamma: float = field(default=2.0, metadata=opt("gamma of the focal loss", rule=NON_NEGATIVE))
    dice: Literal["batch", "image"] = field(
        default="batch",
        metadata=opt(  # see guides.dice_loss
            "Dice over the whole batch (batch) or averaged per image (image)"
        ),
    )
    ema_decay: float = field(
        default=0.999, metadata=opt("EMA decay of the guide coefficients", flag="--ema", rule=FRACTION)
    )
    lr: float = field(default=1e-3, metadata=opt("guide Adam learning rate", flag="--guide-lr", rule=POSITIVE))
    batch_images: int = field(
        default=16, metadata=opt("images per guide step", flag="--guide-batch-images", rule=AT_LEAST_1)
    )
    epochs: int = field(default=20, metadata=opt("guide training epochs", flag="--guide-epochs", rule=NON_NEGATIVE))
    init_scale: float = field(
        default=0.01,
        metadata=opt(  # small and positive: every atom starts active
            "scale of the initial guide coefficients theta", flag="--guide-init-scale", rule=NON_NEGATIVE
        ),
    )
    seed: int = field(default=0, metadata=opt("guide seed", cli=False))  # set with the SAE's by --seed
    # -- official four-guide form (protocols.OFFICIAL sets these) --
    form: Literal["pair", "official"] = field(
        default="pair",
        metadata=opt(
            "pair (a normal and an anomaly local guide) or official (global and local pairs)", flag="--guide-form"
        ),
    )
    adam_betas: tuple[float, float] = field(
        default=(0.9, 0.999),
        metadata=opt("guide Adam betas", flag="--guide-adam-betas", rule=BETAS, metavar=("B1", "B2")),
    )
    order: Literal["studio", "official"] = field(
        default="studio",
        metadata=opt(
            "guide batch order and initial theta: studio (seeded randperm) or official (the official code's "
            "seeded draws, official_order.py)",
            flag="--guide-order",
        ),
    )
    ema_start: int = field(
        default=0,
        metadata=opt(
            "step from which the EMA of theta is updated (official: 100; before it the EMA holds the initial theta)",
            flag="--ema-start",
            rule=NON_NEGATIVE,
        ),
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class ScoreConfig:
    """Anomaly map and image score (SPG_METHOD.md, scoring)."""

    SECTION: ClassVar[str] = "score"

    aggregation: Literal["max", "mean", "lse"] = field(
        default="max", metadata=opt("image score pooling of the map: max, mean or lse")
    )
    lse_temperature: float = field(
        default=0.1,
        metadata=opt("temperature T of log-sum-exp pooling (0: the max)", flag="--lse-t", rule=NON_NEGATIVE),
    )
    smoothing_sigma: float = field(
        default=0.0,
        metadata=opt(
            "Gaussian sigma of the maps before pixel metrics (0 = off); `spg eval`: default the run's own",
            rule=NON_NEGATIVE,
        ),
    )
    image_score: Literal["map", "smoothed_map", "cls"] = field(
        default="map",
        metadata=opt(
            "map (pool the raw map), smoothed_map (pool the smoothed map; official), or cls (the official global "
            "guides on the CLS token)"
        ),
    )
    # -- the atom-space context beside SPG (context.py); never part of the official protocol --
    context: bool = field(
        default=False,
        metadata=opt("fuse SPG with the atom-space context term (how unlike its image's other patches a patch is)"),
    )
    context_form: Literal["logit", "mix"] = field(
        default="logit",
        metadata=opt("how the context is fused: logit (added to SPG's logit) or mix (mixed with its probability)"),
    )
    context_weight: float | None = field(
        default=None,
        metadata=opt(
            "weight of the context term (left out: the weight `spg select` chose, read from --context-select)",
            rule=NON_NEGATIVE,
        ),
    )
    context_select: str | None = field(
        default=None, metadata=opt("select.json of `spg select` whose chosen context form and weight --context uses")
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class RunConfig:
    """One aux -> target experiment."""

    aux: str = field(default="synthetic-a", metadata=opt("auxiliary dataset", cli=False))  # per command
    target: str = field(default="synthetic-b", metadata=opt("target dataset", cli=False))
    backbone: str = field(
        default="dinov3-vitl16",
        metadata=opt(
            "dinov3-vitl16 (default), dinov2-large, siglip-large, openclip-vitl14-336, builtin; "
            "NAME-tiny / NAME-random: random-initialised small / full-size models"
        ),
    )
    weights: str | None = field(
        default=None, metadata=opt("hub id, local directory or checkpoint file (default: the registry's)")
    )
    image_size: int | None = field(
        default=None,
        metadata=opt(
            "side S the images are resized to, a multiple of the backbone's patch size (default: the "
            "protocol's: 448 for the official DINOv3, DINOv2 and SigLIP, 518 for OpenCLIP; else the registry's)",
            rule=AT_LEAST_1,
            metavar="S",
        ),
    )
    token_dtype: Literal["float16", "float32"] | None = field(
        default=None,
        metadata=opt(
            "dtype of stored tokens (default: float32 under the official protocol, the tokens exactly as "
            "extracted; float16 under studio, half the disk and memory)"
        ),
    )
    method: Literal["spg", "free_guides", "random_dict"] = field(
        default="spg", metadata=opt("spg, or an ablation baseline: free guides in R^D, or SPG on a random dictionary")
    )
    device: str = field(default="auto", metadata=opt("auto (CUDA when present), cpu, cuda, cuda:1 ..."))
    protocol: Literal["official", "studio"] = field(
        default="studio",
        metadata=opt(  # protocols.PROTOCOLS
            "settings preset: official (the authors' code, step for step; default for the paper backbones) or "
            "studio (this project's; default for builtin and CPU backbones)",
            cli=False,
        ),
    )  # cli.py: default by backbone
    sae: SAEConfig = field(default_factory=SAEConfig)
    guides: GuideConfig = field(default_factory=GuideConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    SECTIONS: ClassVar[tuple[type, ...]] = (SAEConfig, GuideConfig, ScoreConfig)

    def __post_init__(self) -> None:
        validate(self)
        if self.protocol == "official" and self.score.context:
            raise SPGError(
                "--context is not part of the official protocol (its maps stay the authors' maps)",
                fix="drop --context, or use a studio run",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        sections = {s.SECTION: s(**_tuples(_known(s, d.pop(s.SECTION, {})))) for s in cls.SECTIONS}
        return cls(**_known(cls, d), **sections)


@dataclass
class ExtractConfig:
    """How tokens are extracted and runs read: speed and logging only, never a result (so not saved)."""

    cache_dir: str | None = field(
        default=None, metadata=opt("token stores and synthetic data (default $SPG_CACHE or ~/.cache/spg)")
    )
    skip_bad: bool = field(default=False, metadata=opt("skip unreadable images, writing skipped.json in the store"))
    batch_size: int | None = field(
        default=None, metadata=opt("extraction batch size (default 64 on GPU, 8 on CPU)", rule=AT_LEAST_1)
    )
    workers: int | None = field(default=None, metadata=opt("image decoding workers", rule=NON_NEGATIVE))
    quiet: bool = field(default=False, metadata=opt("no progress bars"))
    compile: bool = field(default=False, metadata=opt("torch.compile the backbone (faster extraction on CUDA)"))
    max_host_memory: str | None = field(
        default=None,
        metadata=opt(
            "host memory training may hold, e.g. 512MB or 4GiB (default: half the machine's); SAE training "
            "streams from the store when its tokens do not fit",
            rule=SIZE,
        ),
    )
    stream: Literal["auto", "always", "never"] = field(
        default="auto",
        metadata=opt(
            "stream SAE training from the store: auto (when the tokens exceed --max-host-memory), always, never"
        ),
    )

    def __post_init__(self) -> None:
        validate(self)


def config_warnings(cfg: RunConfig) -> list[str]:
    """Settings that are valid but almost surely not meant: training stages of zero epochs."""
    notes = []
    if cfg.sae.epochs == 0 and cfg.method == "spg":
        notes.append("--sae-epochs 0: the SAE is not trained; its dictionary stays at its random initialisation")
    if cfg.guides.epochs == 0:
        notes.append("--guide-epochs 0: the guides are not trained; they stay at their initial coefficients")
    return notes


def _tuples(d: dict[str, Any]) -> dict[str, Any]:
    """JSON turns tuples (Adam betas) into lists: turn them back."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} - {s.SECTION for s in RunConfig.SECTIONS}
    return {k: v for k, v in d.items() if k in names}
