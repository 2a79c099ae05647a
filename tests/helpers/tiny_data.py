"""Tiny synthetic data sets in MVTec layout, for end-to-end tests that must take seconds.

Two categories per set, 3 good and 4 anomalous test images each, at 128 px: enough for
every stage and metric to be defined, far too little for the figures to mean anything
(the acceptance figures live in test_end_to_end.py on the full synthetic groups).
"""

from __future__ import annotations

from pathlib import Path

from spg_core.data import generate_synthetic

TINY_AUX = ("disc", "weave")
TINY_TARGET = ("pill", "tiles")
# A random-initialised tiny DINOv3 (64 px, 16 patches of 32 dims: extraction in milliseconds; the
# builtin backbone takes seconds per image), a 32-atom SAE and short training.
TINY_BACKBONE = "dinov3-vitl16-tiny"
TINY_RUN_ARGS = [
    "--backbone",
    TINY_BACKBONE,
    "--width",
    "32",
    "--k",
    "4",
    "--sae-epochs",
    "2",
    "--guide-epochs",
    "3",
    "--quiet",
    "--device",
    "cpu",
]


def tiny_set(root: Path, categories: tuple[str, ...], seed: int = 0) -> str:
    """Write (once) a tiny synthetic set under `root`; return its `mvtec:` dataset spec."""
    generate_synthetic(
        root,
        seed,
        categories=categories,
        defects=("scratch", "stain"),
        n_train_good=2,
        n_test_good=3,
        n_per_defect=2,
        size=128,
        workers=1,
    )
    return f"mvtec:{root}"


def tiny_pair(root: Path) -> tuple[str, str]:
    """(aux spec, target spec): disjoint categories, as a zero-shot run needs."""
    return tiny_set(root / "aux", TINY_AUX, seed=1), tiny_set(root / "target", TINY_TARGET, seed=2)
