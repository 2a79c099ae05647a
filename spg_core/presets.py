"""Named settings for runs that must be quick on a CPU (the built-in demo and the tests).

The paper's defaults (M = 4096, 50 SAE epochs) are the dataclass defaults in
`config.py`; these presets shrink only what a 2-core machine cannot afford and
are recorded in every run's config.json like any other setting.
"""

from __future__ import annotations

from typing import Any

# Builtin backbone on synthetic data: D = 46 tokens make M = 4096 a 90x over-complete
# dictionary; 1024 atoms keep the SAE honest and train in seconds.
DEMO_PRESET: dict[str, Any] = {
    "backbone": "builtin",
    "sae": {"width": 1024, "k": 32, "epochs": 20},
    "guides": {"epochs": 20},
}
