"""Command-line options generated from the config dataclasses: one source for each option's
flag, type, choices, default and help (config.py declares them beside each field's default).

Two kinds of option:
    section options   fields of SAEConfig / GuideConfig / ScoreConfig. Left out, they take the
                      run's preset's value (protocols.py), so they default to None here and
                      their help gives every preset's default; `section_overrides` turns the
                      given ones back into {section: {field: value}}.
    field options     other fields (RunConfig's backbone, weights, method, device; ExtractConfig):
                      the dataclass default, or None where a left-out option keeps a stored run's value.

The annotation gives the rest: Literal -> choices, tuple -> that many values, bool -> a
--x / --no-x pair (a lone --x switch for a field that is off by default and not a run setting).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

from .backbones import parse_backbone_name
from .config import RunConfig, field_types, flag_of, literal_choices, non_optional, option_of
from .protocols import FAMILY_PRESETS, PRESETS, Preset, check_preset, default_preset, overrides

T = TypeVar("T")


def dest_of(f: dataclasses.Field) -> str:
    """The argparse attribute a field's option is parsed into (--sae-lr -> sae_lr)."""
    return flag_of(f).lstrip("-").replace("-", "_")


def exposed_fields(cls: type, names: Iterable[str] | None = None) -> list[dataclasses.Field]:
    """The fields of `cls` that are command-line options (all of them, or those in `names`, in that order)."""
    by_name = {f.name: f for f in dataclasses.fields(cls) if (o := option_of(f)) is not None and o.cli}
    return list(by_name.values()) if names is None else [by_name[n] for n in names]


def argument_kwargs(cls: type, f: dataclasses.Field, *, switch: bool) -> dict[str, Any]:
    """add_argument keywords (type, nargs, choices, action) from the field's annotation.
    `switch`: a bool is a lone store_true flag instead of a --x / --no-x pair."""
    kind, option = non_optional(field_types(cls)[f.name]), option_of(f)
    if kind is bool:
        return {"action": "store_true"} if switch else {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(kind) is Literal:
        return {"type": str, "choices": list(option.choices or literal_choices(kind))}
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        return {
            "type": args[0],
            "nargs": len(args),
            "metavar": option.metavar or tuple(f"V{i + 1}" for i in range(len(args))),
        }
    return {"type": kind}


def preset_defaults(cls: type, name: str) -> str:
    """'default by preset: official X, studio Y, ...': the field's value under each preset."""
    base = cls()
    values = [f"{p} {pr.overrides.get(cls.SECTION, {}).get(name, getattr(base, name))}" for p, pr in PRESETS.items()]
    return "default by preset: " + ", ".join(values)


def add_section_options(p: argparse.ArgumentParser, cls: type, names: Iterable[str] | None = None) -> None:
    """One option per exposed field of a config section (all, or those in `names`); left out (None),
    the preset's value holds."""
    for f in exposed_fields(cls, names):
        p.add_argument(
            flag_of(f),
            dest=dest_of(f),
            default=None,
            **argument_kwargs(cls, f, switch=False),
            help=f"{option_of(f).help} ({preset_defaults(cls, f.name)})",
        )


def add_field_options(
    p: argparse.ArgumentParser, cls: type, names: Iterable[str] | None = None, *, omitted: str | None = None
) -> None:
    """Options for plain fields with the dataclass default; with `omitted` (e.g. "the run's own"),
    a left-out option is None and the help says what holds instead."""
    for f in exposed_fields(cls, names):
        switch = omitted is None and f.default is False
        kwargs = argument_kwargs(cls, f, switch=switch)
        if not switch:
            kwargs["default"] = f.default if omitted is None else None
        text = option_of(f).help + (f" (default: {omitted})" if omitted is not None else "")
        p.add_argument(flag_of(f), dest=dest_of(f), help=text, **kwargs)


def section_overrides(args: argparse.Namespace, sections: Iterable[type]) -> dict[str, dict[str, Any]]:
    """{section: {field: value}} for the section options given on the command line."""
    out: dict[str, dict[str, Any]] = {}
    for cls in sections:
        for f in exposed_fields(cls):
            value = getattr(args, dest_of(f), None)
            if value is not None:
                out.setdefault(cls.SECTION, {})[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def field_values(args: argparse.Namespace, cls: type, names: Iterable[str] | None = None) -> dict[str, Any]:
    """{field: value} of the plain-field options the parser has (None where left out with `omitted`)."""
    return {f.name: getattr(args, dest_of(f)) for f in exposed_fields(cls, names) if hasattr(args, dest_of(f))}


def config_from_args(args: argparse.Namespace, cls: type[T]) -> T:
    """A config built from its options (validated by the config itself)."""
    return cls(**field_values(args, cls))


# -- presets -----------------------------------------------------------------------------------


def add_preset_option(p: argparse.ArgumentParser, backbone: str = "the backbone's") -> None:
    """--preset NAME; left out, `backbone` (e.g. "the first backbone's") family picks it."""
    families = ", ".join(f"{name} for {family}" for family, name in FAMILY_PRESETS.items())
    p.add_argument(
        "--preset",
        default=None,
        choices=list(PRESETS),
        help="named settings under the options: "
        + "; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items())
        + f". Default: {backbone} family's ({families}; studio otherwise), or --protocol's own",
    )


def preset_of(args: argparse.Namespace, backbone: str) -> Preset:
    """--preset, else --protocol's own preset (where the command has one), else `backbone`'s family's."""
    name = args.preset or getattr(args, "protocol", None) or default_preset(parse_backbone_name(backbone)[0].family)
    return check_preset(name)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` on top, section by section ({section: {field: value}} dicts)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def preset_sections(args: argparse.Namespace, backbone: str) -> dict[str, dict[str, Any]]:
    """{section: {field: value}}: the preset's settings with the section options given on top."""
    return merged(overrides(preset_of(args, backbone).name), section_overrides(args, RunConfig.SECTIONS))
