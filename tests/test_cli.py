"""`spg` options generated from the config dataclasses: every field is there with its help and
type, defaults come from the protocol unless an option is given, and a stored run's own settings
hold for options left out (`spg eval`, `spg train-guides`)."""

from __future__ import annotations

import argparse
import json
import typing

import pytest

from spg_core import cli
from spg_core.config import (
    ExtractConfig,
    GuideConfig,
    RunConfig,
    SAEConfig,
    ScoreConfig,
    field_types,
    flag_of,
    literal_choices,
    non_optional,
    option_of,
)
from spg_core.errors import SPGError
from spg_core.options import exposed_fields
from spg_core.protocols import OFFICIAL, overrides

# The flags of each command before the options were generated (hand-written tables, 2026-11-29):
# none may disappear.
LEGACY_FLAGS = {
    "run": "--aggregation --aupro --aux --auxk --auxk-dead-tokens --backbone --batch-size --cache-dir --compile "
    "--device --dice --ema --guide-batch-images --guide-epochs --guide-lr --guide-topk --guide-variant "
    "--image-score --k --l1 --lse-t --method --out --protocol --quiet --sae-batch-images --sae-epochs "
    "--sae-lr --seed --skip-bad --smoothing-sigma --target --tau --weights --width --workers",
    "extract": "--backbone --batch-size --cache-dir --compile --dataset --device --protocol --quiet --skip-bad "
    "--weights --workers",
    "train-guides": "--batch-size --cache-dir --compile --device --dice --ema --guide-batch-images --guide-epochs "
    "--guide-lr --guide-topk --guide-variant --l1 --protocol --quiet --run --skip-bad --tau --workers",
    "eval": "--aggregation --aupro --batch-size --cache-dir --compile --device --image-score --lse-t --quiet --run "
    "--skip-bad --smoothing-sigma --target --workers",
    "predict": "--device --max-pixels --out --run --skip-bad",
}
TINY_OFFICIAL = [
    "run",
    "--aux",
    "synthetic-a",
    "--target",
    "synthetic-b",
    "--out",
    "unused",
    "--backbone",
    "dinov2-large-tiny",
]  # a paper family: official by default
TINY_STUDIO = ["run", "--aux", "synthetic-a", "--target", "synthetic-b", "--out", "unused", "--backbone", "builtin"]


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _actions(name: str) -> dict[str, argparse.Action]:
    return {flag: a for a in _command(name)._actions for flag in a.option_strings}


def test_no_flag_of_the_hand_written_tables_is_lost():
    for command, flags in LEGACY_FLAGS.items():
        missing = set(flags.split()) - set(_actions(command))
        assert not missing, f"spg {command} lost {sorted(missing)}"


def test_every_exposed_field_is_an_option_with_its_help_and_type():
    actions = _actions("run")
    for cls in (SAEConfig, GuideConfig, ScoreConfig, RunConfig, ExtractConfig):
        for f in exposed_fields(cls):
            action = actions[flag_of(f)]
            assert option_of(f).help in action.help, flag_of(f)
            kind = non_optional(field_types(cls)[f.name])
            if kind is bool:  # a --x / --no-x pair for run settings, a lone switch for ExtractConfig's
                assert (f"--no-{flag_of(f)[2:]}" in action.option_strings) == (cls is not ExtractConfig)
                assert action.nargs == 0
            elif choices := literal_choices(kind):
                assert set(action.choices) == set(option_of(f).choices or choices)
            elif typing.get_origin(kind) is tuple:
                assert action.nargs == 2 and action.type is float
            else:
                assert action.type is kind, flag_of(f)
    # Section options default to None so that the protocol decides; help gives each protocol's value.
    assert actions["--smoothing-sigma"].default is None
    assert "official 4.0" in actions["--smoothing-sigma"].help and "studio 0.0" in actions["--smoothing-sigma"].help
    # Fields set another way are not options of their own.
    assert "--sae-seed" not in actions and "--guide-seed" not in actions and "--seed" in actions


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--aggregation", "median"),
        ("--guide-variant", "free"),
        ("--guide-form", "both"),
        ("--sae-init-bias", "mode"),
        ("--method", "pca"),
    ],
)
def test_a_literal_option_rejects_a_bad_value_at_parse_time(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args([*TINY_STUDIO, flag, value])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def _config(argv: list[str]) -> RunConfig:
    return cli._config_from(cli.build_parser().parse_args(argv))


def test_a_backbone_takes_its_familys_preset_unless_one_is_named():
    effnet = ["run", "--aux", "synthetic-a", "--target", "synthetic-b", "--out", "unused", "--backbone", "effnet-lite0"]
    cfg = _config(effnet)  # docs/effnet.md's settings, not the paper's M 4096 x 50 epochs
    assert (cfg.protocol, cfg.sae.width, cfg.sae.k, cfg.sae.epochs) == ("studio", 512, 32, 10)
    assert (cfg.guides.epochs, cfg.guides.lr) == (30, 3e-3)
    paper = _config([*effnet, "--preset", "studio"])
    assert (paper.sae.width, paper.sae.epochs) == (4096, 50)
    given = _config([*effnet, "--width", "1024"])  # an explicit option still wins over the preset
    assert (given.sae.width, given.sae.epochs) == (1024, 10)
    assert _config(TINY_STUDIO).sae.width == 512  # builtin: the demo's sizes
    official = _config([*effnet, "--preset", "official"])
    assert official.protocol == "official" and official.sae.width == 4096
    help_text = " ".join(_command("run").format_help().split())
    assert "effnet for effnet" in help_text and "effnet 512" in help_text


def test_an_explicit_option_overrides_the_protocol_and_a_left_out_one_keeps_it():
    default = _config(TINY_OFFICIAL)
    assert default.protocol == "official"
    # sae: --k given; width, auxk, bias from the official protocol
    cfg = _config([*TINY_OFFICIAL, "--k", "8"])
    assert (cfg.sae.k, cfg.sae.width, cfg.sae.auxk, cfg.sae.bias) == (8, 4096, 512, False)
    cfg = _config([*TINY_OFFICIAL, "--sae-bias", "--sae-adam-betas", "0.8", "0.99"])
    assert cfg.sae.bias is True and cfg.sae.adam_betas == (0.8, 0.99) and cfg.sae.k == default.sae.k == 32
    # guides: --guide-lr given; epochs, batch_images, form from the protocol
    cfg = _config([*TINY_OFFICIAL, "--guide-lr", "0.5"])
    assert (cfg.guides.lr, cfg.guides.epochs, cfg.guides.batch_images, cfg.guides.form) == (0.5, 15, 8, "official")
    # score: --smoothing-sigma given; image_score from the protocol; left out, the protocol's sigma 4
    cfg = _config([*TINY_OFFICIAL, "--smoothing-sigma", "1"])
    assert (cfg.score.smoothing_sigma, cfg.score.image_score) == (1.0, "smoothed_map")
    assert default.score.smoothing_sigma == 4.0
    # the studio protocol's values hold the same way
    studio = _config([*TINY_STUDIO, "--guide-form", "official", "--seed", "3"])
    assert (studio.protocol, studio.guides.form, studio.sae.bias, studio.score.smoothing_sigma) == (
        "studio",
        "official",
        True,
        0.0,
    )
    assert studio.sae.seed == studio.guides.seed == 3


@pytest.mark.parametrize(
    "argv, what",
    [
        (["--width", "0"], "sae.width = 0 must be 1 or more"),
        (["--width", "8", "--k", "9"], "sae.k = 9 is larger"),
        (["--ema", "1.5"], "guides.ema_decay = 1.5 must be in [0, 1)"),
        (["--batch-size", "0"], "batch_size = 0 must be 1 or more"),
    ],
)
def test_a_bad_option_value_is_one_clear_error(argv, what, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("spg_core.cli.run_experiment", _must_not_run)
    out = str(tmp_path / "run")
    assert cli.main([*TINY_STUDIO[:6], out, "--backbone", "builtin", *argv]) == 2
    err = capsys.readouterr().err
    assert what in err and "fix:" in err and "Traceback" not in err


def _must_not_run(*args, **kwargs):
    raise AssertionError("the pipeline ran with a bad option")


@pytest.fixture
def stored_run(tmp_path):
    """A run directory holding only an official config.json (device cpu, sigma 4, guide lr 0.01)."""
    cfg = RunConfig.from_dict(
        {**overrides(OFFICIAL), "protocol": OFFICIAL, "backbone": "dinov2-large-tiny", "device": "cpu"}
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    return tmp_path


class Stop(SPGError):
    pass


def _recording(seen: dict):
    def fake(*args, **kwargs):
        seen.update(kwargs, args=args)
        raise Stop("recorded")

    return fake


def test_eval_keeps_the_runs_own_score_settings_and_device_unless_given(stored_run, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr("spg_core.cli.evaluate_target", _recording(seen))
    cli.main(["eval", "--run", str(stored_run)])
    assert seen["score"].smoothing_sigma == 4.0 and seen["score"].image_score == "smoothed_map"
    assert seen["device"] is None  # evaluate_target: None = the run's own
    cli.main(["eval", "--run", str(stored_run), "--smoothing-sigma", "0", "--device", "cuda:1"])
    assert seen["score"].smoothing_sigma == 0.0 and seen["score"].image_score == "smoothed_map"
    assert seen["device"] == "cuda:1"


def test_train_guides_keeps_the_runs_guides_unless_given(stored_run, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr("spg_core.cli.train_stages", _recording(seen))
    cli.main(["train-guides", "--run", str(stored_run), "--guide-epochs", "2"])
    cfg = seen["args"][0]
    assert (cfg.guides.epochs, cfg.guides.lr, cfg.guides.form, cfg.device) == (2, 0.01, "official", "cpu")
    cli.main(["train-guides", "--run", str(stored_run), "--protocol", "studio", "--device", "cuda"])
    cfg = seen["args"][0]
    assert (cfg.guides.lr, cfg.guides.form, cfg.guides.seed, cfg.device) == (1e-3, "pair", 111, "cuda")
