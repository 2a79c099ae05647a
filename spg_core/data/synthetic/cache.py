"""The synthetic set on disk: generated once per (generator version, seed) in MVTec layout,
atomically, and re-used while its marker file matches.

    CACHE/synthetic/v{GENERATOR_VERSION}/seed-{SEED}/CATEGORY/{train/good, test/*, ground_truth/*}

The folder is derived from GENERATOR_VERSION, so bumping the version can never leave a
stale copy under a folder that names another version.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import SPGError
from ...paths import cache_root
from ..mvtec import load_mvtec
from ..sample import Dataset
from .compose import IMAGE_SIZE, render_image
from .defects import DEFECT_KINDS, DEFECTS
from .draw import Rng
from .scenes import CATEGORIES, RENDERERS

GENERATOR_VERSION = 2  # bump whenever any output byte would change: cached copies regenerate
MARKER = "SYNTHETIC.json"
SYNTHETIC_GROUPS: dict[str, list[str]] = {
    "synthetic-a": ["disc", "granite", "nut", "weave"],
    "synthetic-b": ["brushed", "pill", "plug", "tiles"],
}
ALL_GROUP = "synthetic"
_SEED_SUFFIX = re.compile(r"^(?P<group>[\w-]+?)(@seed=(?P<seed>\d+))?$")


def _rng(seed: int, category: str, split: str, defect: str, index: int) -> Rng:
    """An RNG keyed by the image's identity (crc32: stable across runs, unlike hash())."""
    key = zlib.crc32(f"{category}/{split}/{defect}".encode())
    return np.random.default_rng([seed, key, index, GENERATOR_VERSION])


def _save_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Level 1: sensor noise makes images nearly incompressible, and level 6 costs ~1.5x the time.
    Image.fromarray(arr).save(path, format="PNG", compress_level=1)


def _write_category(
    root: Path,
    category: str,
    seed: int,
    defects: Sequence[str],
    n_train_good: int,
    n_test_good: int,
    n_per_defect: int,
    size: int,
) -> None:
    """Write ROOT/CATEGORY/{train/good, test/*, ground_truth/*} for one category."""
    cat = root / category
    jobs = (
        [("train", "good", i) for i in range(n_train_good)]
        + [("test", "good", i) for i in range(n_test_good)]
        + [("test", d, i) for d in defects for i in range(n_per_defect)]
    )
    for split, defect, i in jobs:
        rng = _rng(seed, category, split, defect, i)
        img, mask = render_image(category, None if defect == "good" else defect, rng, size)
        _save_png(img, cat / split / defect / f"{i:03d}.png")
        if mask is not None:
            _save_png(mask.astype(np.uint8) * 255, cat / "ground_truth" / defect / f"{i:03d}_mask.png")


def _marker(
    seed: int,
    categories: Sequence[str],
    defects: Sequence[str],
    n_train_good: int,
    n_test_good: int,
    n_per_defect: int,
    size: int,
) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "categories": list(categories),
        "defects": list(defects),
        "n_train_good": n_train_good,
        "n_test_good": n_test_good,
        "n_per_defect": n_per_defect,
    }


def _marker_matches(root: Path, expected: dict) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == expected
    except (OSError, ValueError):
        return False


def _swap_into_place(tmp: Path, root: Path, expected: dict, force: bool) -> None:
    """Rename the finished `tmp` onto `root`, replacing a stale copy; tolerate a racing writer."""
    if not force and _marker_matches(root, expected):
        return  # a concurrent writer finished first: keep its (identical) copy
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}-{tmp.name[-8:]}")
        os.rename(root, old)
    try:
        os.rename(tmp, root)
    except OSError:
        if not _marker_matches(root, expected):  # someone else won the race with a valid copy: fine
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate_synthetic(
    root: str | os.PathLike,
    seed: int = 0,
    *,
    categories: Sequence[str] = CATEGORIES,
    defects: Sequence[str] = DEFECT_KINDS,
    n_train_good: int = 4,
    n_test_good: int = 10,
    n_per_defect: int = 4,
    size: int = IMAGE_SIZE,
    force: bool = False,
    workers: int | None = None,
) -> Path:
    """Write the synthetic dataset (MVTec layout) to `root`, atomically; return `root`.

    Per category: train/good n_train_good, test/good n_test_good, and
    n_per_defect anomalies per defect kind in test/<defect> with masks in
    ground_truth/<defect>/NNN_mask.png. A `SYNTHETIC.json` marker records the
    generator version and parameters: if it matches, nothing is rewritten.
    The set is built in a temporary sibling folder and renamed into place.
    Categories render in `workers` threads (default: one per CPU, at most 4);
    numpy, scipy and PNG encoding release the GIL for most of the work, and
    threads avoid forking a process that may hold torch or GUI threads.
    """
    root = Path(root)
    unknown = [c for c in categories if c not in RENDERERS] + [d for d in defects if d not in DEFECTS]
    if unknown:
        raise SPGError(
            f"unknown synthetic category/defect {unknown}",
            fix=f"choose categories from {list(CATEGORIES)} and defects from {list(DEFECT_KINDS)}",
        )
    expected = _marker(seed, categories, defects, n_train_good, n_test_good, n_per_defect, size)
    if not force and _marker_matches(root, expected):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    except OSError as exc:
        raise SPGError(
            f"cannot write the synthetic dataset ({exc})",
            path=str(root),
            fix="set SPG_CACHE (or pass cache_dir) to a writable folder",
        ) from None
    try:
        n_workers = workers or min(os.cpu_count() or 1, 4)
        with ThreadPoolExecutor(max_workers=max(1, min(n_workers, len(categories)))) as pool:
            jobs = [
                pool.submit(_write_category, tmp, c, seed, defects, n_train_good, n_test_good, n_per_defect, size)
                for c in categories
            ]
            for job in jobs:
                job.result()  # re-raise any worker error
        (tmp / MARKER).write_text(json.dumps(expected, indent=2) + "\n")  # written last: marks completion
        _swap_into_place(tmp, root, expected, force)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def cache_subdir(seed: int = 0) -> Path:
    """`synthetic/v{GENERATOR_VERSION}/seed-{seed}`, relative to the cache folder."""
    return Path("synthetic") / f"v{GENERATOR_VERSION}" / f"seed-{seed}"


def synthetic_root(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    return cache_root(cache_dir) / cache_subdir(seed)


def parse_synthetic_spec(spec: str) -> tuple[str, int] | None:
    """'synthetic-a' -> ('synthetic-a', 0); 'synthetic-b@seed=2' -> ('synthetic-b', 2); other specs -> None.

    The seed keys every image's RNG: another seed is another draw of the same categories
    and defect kinds (for the spread of a figure over image draws)."""
    match = _SEED_SUFFIX.match(spec.strip())
    if match is None or (match["group"] != ALL_GROUP and match["group"] not in SYNTHETIC_GROUPS):
        return None
    return match["group"], int(match["seed"] or 0)


def open_synthetic(spec: str, split: str = "test", cache_dir: str | os.PathLike | None = None) -> Dataset:
    """`synthetic-a`, `synthetic-b` or `synthetic` (all), optionally `@seed=N` (default 0):
    generate on first use, then load."""
    parsed = parse_synthetic_spec(spec)
    if parsed is None:
        raise SPGError(
            f"unknown synthetic dataset {spec!r}",
            fix=f"use one of {[ALL_GROUP, *SYNTHETIC_GROUPS]}, optionally with @seed=N",
        )
    group, seed = parsed
    root = generate_synthetic(synthetic_root(cache_dir, seed), seed)
    ds = load_mvtec(root, split, name=spec)
    return ds if group == ALL_GROUP else ds.filter(categories=SYNTHETIC_GROUPS[group])
