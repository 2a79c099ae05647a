"""The `spg` console command. `spg dashboard` goes straight to the launcher, which imports no engine module:
torch alone takes seconds to import (tens on a busy machine), and the server should answer at once.
Every other command goes to spg_core.cli."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dashboard"]:
        from .launch import main as dashboard  # noqa: PLC0415 -- light on purpose: no engine module

        return dashboard(argv[1:])
    from .cli import main as cli  # noqa: PLC0415 -- heavy (torch): `spg dashboard` must not import it

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
