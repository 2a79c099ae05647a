"""Named hyper-parameter presets: partial RunConfig dicts applied on top of the paper defaults.

DEMO_PRESET is for the weight-free `builtin` backbone on CPU (demo, tests); builtin is
frozen (docs/builtin_lab_notes.md has how these values were reached, and their figures).
EFFNET_PRESET is for `effnet-lite0`, chosen by `spg select` on the auxiliary side only
(docs/effnet.md: the grid, the folds and the table).
"""

from __future__ import annotations

from typing import Any

DEMO_PRESET: dict[str, Any] = {
    "sae": {"width": 512, "k": 16, "epochs": 10},
    "guides": {"epochs": 60, "lr": 3e-3},
}

EFFNET_PRESET: dict[str, Any] = {
    "sae": {"width": 512, "k": 32, "epochs": 10},
    "guides": {"epochs": 30, "lr": 3e-3},
}
