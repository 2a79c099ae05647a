"""The official run's own settings, from the resolved Hydra config its run directory keeps.

The official code (riips/SPG) writes `RUN/.hydra/config.yaml` beside `RUN/checkpoints/`. The
keys read here (configs/mode/*.yaml, configs/model/*.yaml, configs/experiment/guide_sae.yaml):

    model.id, model.image_size, model.features_list[0]          backbone, S, layer
    sae[0].hidden_dim, sae[0].sparsifier_params.topk             SAE run (mode: train_sae)
    model.method_config.sae[0] ...                                the SAE a guide run loaded
    model.method_config.guide_sae.{checkpoint_epoch, datetime,    which SAE run and epoch it loaded,
        sparsity_type, guide_topk}                                its guide sparsity
    train.epoch, train.learning_rate, train.batch_size,           per run
    train.ema.{enabled, decay}, seed

Only YAML's safe subset is read (`yaml.safe_load`: PyYAML, already installed with
transformers and huggingface_hub); Hydra's `${...}` interpolations stay strings, and none of
the keys above uses one in the official configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import SPGError

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
# model.id of the official configs -> this project's backbone name
OFFICIAL_IDS = {
    "facebook/dinov3-vitl16-pretrain-lvd1689m": "dinov3-vitl16",
    "facebook/dinov2-large": "dinov2-large",
    "google/siglip-large-patch16-384": "siglip-large",
    "ViT-L/14@336px": "openclip-vitl14-336",
}
GUIDE_VARIANTS = {"l1": "relu_l1", "topk": "topk"}


@dataclass(frozen=True)
class OfficialRun:
    """What one official run's config says (None where it says nothing)."""

    path: str
    mode: str | None
    model_id: str | None
    image_size: int | None
    layer: int | None
    width: int | None  # the SAE's (an SAE run's own, or the one a guide run loaded)
    k: int | None
    epochs: int | None
    lr: float | None
    batch_size: int | None
    seed: int | None
    ema_decay: float | None  # guide runs; 0.0 when the EMA is disabled
    sae_epoch: int | None  # guide runs: the SAE checkpoint epoch they loaded
    sae_datetime: str | None  # guide runs: the SAE run's "YYYY-MM-DD/HH-MM-SS"
    guide_variant: str | None
    guide_topk: int | None


def config_beside(checkpoint: str | Path) -> Path | None:
    """`RUN/.hydra/config.yaml` for `RUN/checkpoints/FILE`, when it exists."""
    candidate = Path(checkpoint).resolve().parent.parent / HYDRA_CONFIG
    return candidate if candidate.is_file() else None


def read_official_config(path: str | Path) -> OfficialRun:
    """Parse one resolved Hydra config; an unreadable or non-mapping file is an SPGError."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SPGError(
            f"official config cannot be read ({exc.strerror})", path=str(path), fix="check the path"
        ) from None
    except yaml.YAMLError as exc:
        raise SPGError(
            f"official config is not YAML ({str(exc).splitlines()[0]})",
            path=str(path),
            fix="pass the run's .hydra/config.yaml as the official code wrote it",
        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        raise SPGError(
            "official config has no `model` section",
            path=str(path),
            fix="pass the run's .hydra/config.yaml (not overrides.yaml or hydra.yaml)",
        )
    model, train = doc["model"], _dict(doc.get("train"))
    method = _dict(model.get("method_config"))
    guide = _dict(method.get("guide_sae"))
    sae_list = doc.get("sae") if doc.get("mode") == "train_sae" else method.get("sae")
    sae = _dict(sae_list[0]) if isinstance(sae_list, list) and sae_list else {}
    ema = _dict(train.get("ema"))
    features = model.get("features_list")
    return OfficialRun(
        path=str(path),
        mode=_opt(doc.get("mode"), str),
        model_id=_opt(model.get("id"), str),
        image_size=_opt(model.get("image_size"), int),
        layer=_opt(features[0] if isinstance(features, list) and features else None, int),
        width=_opt(sae.get("hidden_dim"), int),
        k=_opt(_dict(sae.get("sparsifier_params")).get("topk"), int),
        epochs=_opt(train.get("epoch"), int),
        lr=_opt(train.get("learning_rate"), float),
        batch_size=_opt(train.get("batch_size"), int),
        seed=_opt(doc.get("seed"), int),
        ema_decay=(_opt(ema.get("decay"), float) if ema.get("enabled", True) else 0.0) if ema else None,
        sae_epoch=_opt(guide.get("checkpoint_epoch"), int),
        sae_datetime=_opt(guide.get("datetime"), str),
        guide_variant=GUIDE_VARIANTS.get(str(guide.get("sparsity_type"))) if guide else None,
        guide_topk=_opt(guide.get("guide_topk"), int),
    )


def backbone_of(run: OfficialRun) -> str | None:
    """The project's backbone name for the config's `model.id` (None: not a registry backbone)."""
    return OFFICIAL_IDS.get(run.model_id or "")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _opt(value: Any, kind: type) -> Any:
    """`kind(value)`, or None for a missing value or a Hydra interpolation left as a string."""
    if value is None or (isinstance(value, str) and kind is not str and value.startswith("${")):
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        return None
