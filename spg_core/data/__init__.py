"""Datasets: one `open_dataset(spec)` for every source, all yielding `Sample` records.

Opening is cheap (folder listings and stats, no image decoding) and fails early
with an SPGError that says what was found and what layout is expected.
"""

from __future__ import annotations

import os

from ..errors import SPGError
from .folder import load_folder
from .mvtec import IMAGE_EXTS, load_mvtec
from .sample import Dataset, Sample
from .synthetic import (
    ALL_GROUP,
    DEFECT_KINDS,
    SYNTHETIC_GROUPS,
    generate_synthetic,
    open_synthetic,
    parse_synthetic_spec,
)
from .visa import load_visa

# Accepted dataset specs and what each expects (shown in errors and CLI help).
DATASET_KINDS: dict[str, str] = {
    "mvtec:PATH": "MVTec AD layout: PATH/CATEGORY/{train/good, test/<defect>, "
    "ground_truth/<defect>/<stem>_mask.png}; PATH may be one category folder",
    "visa:PATH": "VisA: PATH/split_csv/1cls.csv (object,split,label,image,mask) and the files it lists",
    "folder:PATH": "one category: PATH/{good,<defect>}/*.png with PATH/masks/<defect>/<stem>_mask.png, "
    "or PATH/images/*.png with PATH/masks/<stem>_mask.png",
    "synthetic-a": f"built-in synthetic set, categories {', '.join(SYNTHETIC_GROUPS['synthetic-a'])}",
    "synthetic-b": f"built-in synthetic set, categories {', '.join(SYNTHETIC_GROUPS['synthetic-b'])}",
    ALL_GROUP: "both synthetic groups (all 8 categories)",
    "synthetic-a@seed=N": "the same categories drawn with image seed N (default 0)",
}
DATASET_HELP = "accepted dataset specs:\n" + "\n".join(f"  {k:<12}  {v}" for k, v in DATASET_KINDS.items())

_PATH_LOADERS = {"mvtec": load_mvtec, "visa": load_visa, "folder": load_folder}
SPLIT_CHOICES = ("test", "train", "all")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'mvtec:/data' -> ('mvtec', '/data'); 'synthetic-a' -> ('synthetic-a', None)."""
    spec = spec.strip()
    if parse_synthetic_spec(spec) is not None:
        return spec, None
    kind, sep, path = spec.partition(":")
    if sep and kind.lower() in _PATH_LOADERS:
        if not path.strip():
            raise SPGError(
                f"dataset spec {spec!r} has no path after '{kind}:'", fix=f"write it as {kind}:/path/to/dataset"
            )
        return kind.lower(), path.strip()
    hint = ""
    if not sep and os.path.isdir(os.path.expanduser(spec)):
        hint = f" (it is a folder: did you mean mvtec:{spec} or folder:{spec}?)"
    raise SPGError(
        f"unknown dataset spec {spec!r}{hint}\n{DATASET_HELP}",
        fix="prefix the path with its layout, e.g. mvtec:/data/mvtec_ad, or use synthetic-a",
    )


def open_dataset(spec: str, split: str = "test", cache_dir: str | None = None) -> Dataset:
    """Open a dataset by spec (see DATASET_KINDS).

    split: "test" (default: the split holding anomalies, used both as auxiliary
    training data and as target), "train" or "all". `cache_dir` is where the
    synthetic set is generated (default $SPG_CACHE or ~/.cache/spg).
    """
    if split not in SPLIT_CHOICES:
        raise SPGError(f"unknown split {split!r}", fix=f"use one of {list(SPLIT_CHOICES)}")
    kind, path = parse_spec(spec)
    if path is None:
        return open_synthetic(kind, split, cache_dir)
    return _PATH_LOADERS[kind](path, split, name=spec)


__all__ = [
    "DATASET_HELP",
    "DATASET_KINDS",
    "DEFECT_KINDS",
    "IMAGE_EXTS",
    "SYNTHETIC_GROUPS",
    "Dataset",
    "Sample",
    "generate_synthetic",
    "load_folder",
    "load_mvtec",
    "load_visa",
    "open_dataset",
    "parse_spec",
]
