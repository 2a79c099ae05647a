"""Command-line options generated from the config dataclasses: one source for each option's
flag, type, choices, default and help (config.py declares them beside each field's default).

Two kinds of option:
    section options   fields of SAEConfig / GuideConfig / ScoreConfig. Left out, they take the
                      run's protocol's value (protocols.py), so they default to None here and
                      their help gives every protocol's default; `section_overrides` turns the
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

from .config import field_types, flag_of, literal_choices, non_optional, option_of
from .protocols import PROTOCOLS, overrides

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


def protocol_defaults(cls: type, name: str) -> str:
    """'default: studio X, official Y': the field's value under each protocol."""
    base = cls()
    values = [f"{p} {overrides(p).get(cls.SECTION, {}).get(name, getattr(base, name))}" for p in PROTOCOLS]
    return "default: " + ", ".join(values)


def add_section_options(p: argparse.ArgumentParser, cls: type) -> None:
    """One option per exposed field of a config section; left out (None), the protocol's value holds."""
    for f in exposed_fields(cls):
        p.add_argument(
            flag_of(f),
            dest=dest_of(f),
            default=None,
            **argument_kwargs(cls, f, switch=False),
            help=f"{option_of(f).help} ({protocol_defaults(cls, f.name)})",
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
