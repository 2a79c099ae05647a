"""Inline labels: status pills (HTML styled by assets/style.css) and rows of metric cards."""

from __future__ import annotations

import html

import streamlit as st

from . import glossary


def pill(text: str, kind: str = "neutral", title: str = "") -> str:
    """An inline status pill (HTML) styled by assets/style.css; `title`: plain words shown on hover."""
    hover = f' title="{html.escape(title)}"' if title else ""
    return f'<span class="spg-pill {html.escape(kind)}"{hover}>{html.escape(text)}</span>'


def metric_cards(values: dict[str, float], deltas: dict[str, float] | None = None) -> None:
    """A row of st.metric cards (values in %)."""
    cols = st.columns(len(values))
    for col, (name, v) in zip(cols, values.items()):
        delta = None if deltas is None or name not in deltas else f"{deltas[name]:+.1f}"
        col.metric(name, "n/a" if v != v else f"{v:.1f}%", delta, help=glossary.say(name))
