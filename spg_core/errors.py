"""The one exception type users see: what went wrong, where, and how to fix it."""

from __future__ import annotations


class SPGError(Exception):
    """A user-facing error. The message names the file or value and the fix.

    The CLI prints these without a traceback; anything else is a bug.
    """

    def __init__(self, message: str, *, path: str | None = None, fix: str | None = None):
        parts = [message]
        if path is not None:
            parts.append(f"  file: {path}")
        if fix is not None:
            parts.append(f"  fix:  {fix}")
        super().__init__("\n".join(parts))
        self.path = path
        self.fix = fix
