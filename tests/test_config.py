"""The config dataclasses: config.json's format, field documentation, and validation in one place."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from spg_core.config import ExtractConfig, GuideConfig, RunConfig, SAEConfig, ScoreConfig, field_types, option_of
from spg_core.errors import SPGError
from spg_core.protocols import PROTOCOLS, overrides

# config.json of an official run as the code wrote it before the fields carried their options
# (JSON: Adam betas as lists), with the keys RunDir.write_config adds beside the settings.
STORED = {
    "aux": "folder:/data/parts",
    "target": "folder:/data/parts",
    "backbone": "dinov2-large-tiny",
    "weights": None,
    "image_size": None,
    "token_dtype": None,
    "method": "spg",
    "device": "cpu",
    "protocol": "official",
    "sae": {
        "width": 64,
        "k": 4,
        "lr": 0.001,
        "batch_images": 16,
        "epochs": 1,
        "init_bias": "mean",
        "dead_after_tokens": 1000000,
        "seed": 111,
        "bias": False,
        "adam_betas": [0.5, 0.999],
        "auxk": 512,
        "auxk_coef": 0.03125,
        "auxk_dead_tokens": 10000000,
        "auxk_threshold": 0.001,
        "order": "official",
        "shard": "data",
        "stream_window_shards": 4,
    },
    "guides": {
        "variant": "relu_l1",
        "l1": 0.001,
        "topk": 32,
        "tau": 0.07,
        "focal_gamma": 2.0,
        "dice": "image",
        "ema_decay": 0.999,
        "lr": 0.01,
        "batch_images": 8,
        "epochs": 1,
        "init_scale": 0.1,
        "seed": 111,
        "form": "official",
        "adam_betas": [0.5, 0.999],
        "order": "official",
        "ema_start": 100,
    },
    "score": {
        "aggregation": "max",
        "lse_temperature": 0.1,
        "smoothing_sigma": 4.0,
        "image_score": "smoothed_map",
        "context": False,
        "context_form": "logit",
        "context_weight": None,
        "context_select": None,
    },
}
EXTRA_KEYS = {"backbone_identity": {"tokens": "official"}, "aux_store": "/cache/tokens/x", "versions": {}}


def test_a_stored_config_loads_and_saves_byte_for_byte():
    cfg = RunConfig.from_dict({**STORED, **EXTRA_KEYS})
    assert cfg.sae.adam_betas == (0.5, 0.999) and cfg.guides.form == "official"
    assert json.dumps(cfg.to_dict()) == json.dumps(STORED)


def test_a_run_older_than_protocols_loads_with_studio_defaults():
    old = {k: v for k, v in STORED.items() if k != "protocol"}
    old["sae"] = {k: old["sae"][k] for k in ("width", "k", "lr", "batch_images", "epochs", "seed")}
    old["guides"] = {k: old["guides"][k] for k in ("variant", "l1", "topk", "tau", "lr", "epochs", "seed")}
    old["score"] = {"aggregation": "mean", "lse_temperature": 0.1, "smoothing_sigma": 0.0}
    cfg = RunConfig.from_dict(old)
    assert cfg.protocol == "studio" and cfg.sae.bias is True and cfg.sae.auxk == 0
    assert cfg.guides.form == "pair" and cfg.score.image_score == "map" and cfg.score.aggregation == "mean"


def test_every_field_is_documented_beside_its_default():
    for cls in (SAEConfig, GuideConfig, ScoreConfig, RunConfig, ExtractConfig):
        for f in dataclasses.fields(cls):
            if f.name in ("sae", "guides", "score"):
                continue
            option = option_of(f)
            assert option is not None and len(option.help) > 5, f"{cls.__name__}.{f.name} has no help"


def test_the_protocol_field_lists_every_protocol_and_each_protocol_is_a_valid_config():
    assert typing.get_args(field_types(RunConfig)["protocol"]) == PROTOCOLS
    for name in PROTOCOLS:
        assert RunConfig.from_dict({**overrides(name), "protocol": name}).protocol == name


BAD = [
    (SAEConfig, {"width": 0}, "sae.width = 0", "--width"),
    (SAEConfig, {"k": 0}, "sae.k = 0", "--k"),
    (SAEConfig, {"width": 8, "k": 9}, "sae.k = 9", "--k no larger than --width"),
    (SAEConfig, {"lr": 0.0}, "sae.lr = 0.0", "--sae-lr"),
    (SAEConfig, {"epochs": -1}, "sae.epochs = -1", "--sae-epochs"),
    (SAEConfig, {"adam_betas": (1.0, 0.999)}, "sae.adam_betas = (1.0, 0.999)", "--sae-adam-betas"),
    (SAEConfig, {"init_bias": "mode"}, "sae.init_bias = 'mode' is not one of mean, median", "--sae-init-bias"),
    (SAEConfig, {"width": "64"}, "sae.width = '64' is not a whole number", "--width"),
    (GuideConfig, {"ema_decay": 1.0}, "guides.ema_decay = 1.0 must be in [0, 1)", "--ema"),
    (GuideConfig, {"ema_decay": -0.1}, "guides.ema_decay = -0.1", "--ema"),
    (GuideConfig, {"lr": -1e-3}, "guides.lr = -0.001", "--guide-lr"),
    (GuideConfig, {"tau": 0}, "guides.tau = 0", "--tau"),
    (GuideConfig, {"variant": "l2"}, "guides.variant = 'l2'", "--guide-variant one of relu_l1, topk"),
    (GuideConfig, {"dice": "pixel"}, "guides.dice = 'pixel'", "--dice one of batch, image"),
    (ScoreConfig, {"smoothing_sigma": -1.0}, "score.smoothing_sigma = -1.0 must be 0 or more", "--smoothing-sigma"),
    (ScoreConfig, {"aggregation": "median"}, "score.aggregation = 'median'", "--aggregation one of max, mean, lse"),
    (RunConfig, {"method": "pca"}, "method = 'pca'", "--method one of spg, free_guides, random_dict"),
    (RunConfig, {"protocol": "paper"}, "protocol = 'paper'", "`protocol` in the run's config.json"),
    (ExtractConfig, {"batch_size": 0}, "batch_size = 0 must be 1 or more", "--batch-size"),
    (ExtractConfig, {"workers": -2}, "workers = -2", "--workers"),
]


@pytest.mark.parametrize("cls, kwargs, what, fix", BAD, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _, _ in BAD])
def test_a_bad_value_is_rejected_naming_the_field_and_the_fix(cls, kwargs, what, fix):
    with pytest.raises(SPGError) as err:
        cls(**kwargs)
    assert str(err.value).startswith(what) and fix in err.value.fix


def test_validation_covers_replace_and_config_json():
    with pytest.raises(SPGError, match="score.smoothing_sigma"):
        dataclasses.replace(ScoreConfig(), smoothing_sigma=-4.0)
    with pytest.raises(SPGError, match="sae.k = 128 is larger"):
        RunConfig.from_dict({**STORED, "sae": {**STORED["sae"], "k": 128}})


def test_values_every_caller_uses_stay_valid():
    # `--method free_guides` stores guides of variant "free" (pipeline.train_stages): they must load.
    assert (
        RunConfig.from_dict(
            {**STORED, "method": "free_guides", "guides": {**STORED["guides"], "variant": "free", "form": "pair"}}
        ).guides.variant
        == "free"
    )
    assert SAEConfig(width=1, k=1, epochs=0).k == 1  # the smallest dictionary; no training
    assert ScoreConfig(smoothing_sigma=4).smoothing_sigma == 4  # an int where a float is declared
    assert ExtractConfig(batch_size=None, workers=0).workers == 0
