"""Widget values that outlive a page switch.

Streamlit forgets a widget's value once a script run does not draw it, so leaving a page and coming
back reset its patch sliders to 0 and its region to the corner. `keep(key)` is called as a widget is
created (`st.slider(..., key=keep(k))`): it copies the value into a plain session_state dict, which
Streamlit never cleans, and puts it back when the widget is drawn again.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

SHADOW = "_sticky"  # session_state: {widget key: last value}
_UNSET = object()


def keep(key: str, default: Any = _UNSET) -> str:
    """Remember or restore the value of widget `key`; returns `key`. `default` seeds a widget never seen
    (pass the default here, not to the widget: a widget given both warns)."""
    shadow = st.session_state.setdefault(SHADOW, {})
    if key in st.session_state:
        shadow[key] = st.session_state[key]
    elif key in shadow:
        st.session_state[key] = shadow[key]
    elif default is not _UNSET:
        st.session_state[key] = default
    return key


def put(key: str, value: Any) -> None:
    """Set widget `key`'s value (before it is drawn) and its remembered copy."""
    st.session_state[key] = value
    st.session_state.setdefault(SHADOW, {})[key] = value


def forget(key: str) -> None:
    """Drop widget `key`'s value and its remembered copy."""
    st.session_state.pop(key, None)
    st.session_state.setdefault(SHADOW, {}).pop(key, None)
