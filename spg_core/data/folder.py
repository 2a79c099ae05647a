"""Generic folder loader: one category of your own images (`folder:PATH`).

The category is PATH's folder name. Two accepted layouts:

1. Sorted by defect (images may also sit under PATH/images/ instead of PATH/)::

       PATH/good/*.png                 normal images (label 0); "ok"/"normal" also accepted
       PATH/<defect>/*.png             anomalous images (label 1), any other folder name
       PATH/masks/<defect>/<stem>_mask.png   or  <stem>.png   (ground_truth/ also accepted)

2. Flat, labelled by the masks::

       PATH/images/*.png
       PATH/masks/<stem>_mask.png  or  <stem>.png

   An image is anomalous when its mask exists and marks at least one pixel;
   without a mask (or with an all-black one) it is good. This layout decodes
   the masks at open time: it is the only way to tell good from anomalous.

Every image is in the "test" split (a folder has no train/test division);
split="train" is an error that says so.

Anomalous images need masks, as in the MVTec and VisA loaders: a defect image
without one raises an SPGError naming the image and the expected mask path.
We chose strictness over "unlabelled anomalies" because every consumer uses
the mask: an anomalous image scored against an all-zero mask would corrupt
pixel metrics and, as auxiliary data, train the guides that the defect is normal.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SPGError
from .mvtec import (
    GOOD,
    check_root,
    find_mask,
    index_masks,
    is_category_dir,
    list_images,
    list_subdirs,
    missing_mask_error,
    splits_for,
)
from .sample import Dataset, Sample

MASK_DIRS = ("masks", "ground_truth")
GOOD_NAMES = frozenset({"good", "ok", "normal"})
FOLDER_LAYOUT = (
    "PATH/good/*.png + PATH/<defect>/*.png with masks PATH/masks/<defect>/<stem>_mask.png, "
    "or PATH/images/*.png + PATH/masks/<stem>_mask.png"
)


def _mask_dir(root: Path) -> Path | None:
    for name in MASK_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _sorted_samples(category: str, image_dirs: list[Path], mask_root: Path) -> list[Sample]:
    """Layout 1: one sub-folder per defect (good/ for normal images); masks under mask_root/<defect>/."""
    samples: list[Sample] = []
    for d in image_dirs:
        images = list_images(d)
        if d.name.lower() in GOOD_NAMES:
            samples += [Sample(str(p), None, 0, category, GOOD, "test") for p in images]
            continue
        gt_dir = mask_root / d.name
        masks = index_masks(gt_dir)
        for p in images:
            mask = find_mask(masks, p.stem)
            if mask is None:
                raise missing_mask_error(p, gt_dir / f"{p.stem}_mask.png")
            samples.append(Sample(str(p), str(mask), 1, category, d.name, "test"))
    return samples


def _flat_samples(category: str, images: list[Path], mask_root: Path | None) -> list[Sample]:
    """Layout 2: labels come from the masks' content."""
    from ..images import mask_has_anomaly  # noqa: PLC0415 -- keeps `import spg_core.data` free of torch

    masks = index_masks(mask_root) if mask_root else {}
    samples = []
    for p in images:
        mask = find_mask(masks, p.stem)
        if mask is not None and mask_has_anomaly(mask):
            samples.append(Sample(str(p), str(mask), 1, category, "anomaly", "test"))
        else:
            samples.append(Sample(str(p), None, 0, category, GOOD, "test"))
    return samples


def load_folder(root: str | os.PathLike, split: str = "test", name: str | None = None) -> Dataset:
    """Open a generic folder as one category (see the module docstring for the layout)."""
    splits = splits_for(split)
    path = check_root(root, "folder")
    if "test" not in splits:
        raise SPGError(
            "a folder dataset has no train split: all its images are 'test'",
            path=str(path),
            fix="open it with split='test' or 'all', or use an MVTec layout (mvtec:PATH) with train/ and test/ folders",
        )
    if is_category_dir(path) or any(is_category_dir(d) for d in list_subdirs(path)):
        raise SPGError(
            "this folder has train/ or test/ sub-folders: it is in MVTec layout",
            path=str(path),
            fix=f"open it with mvtec:{path}",
        )
    category = path.name
    image_root = path / "images" if (path / "images").is_dir() else path
    mask_root = _mask_dir(path)
    image_dirs = [
        d for d in list_subdirs(image_root) if d.name.lower() not in MASK_DIRS and d.name != "images" and list_images(d)
    ]
    loose = list_images(image_root)
    if image_dirs and loose:
        raise SPGError(
            f"found {len(loose)} images directly in the folder besides the sub-folders "
            f"{[d.name for d in image_dirs]}; the layout is ambiguous",
            path=str(image_root),
            fix=f"move them into good/ or a <defect>/ folder ({FOLDER_LAYOUT})",
        )
    if image_dirs:
        samples = _sorted_samples(category, image_dirs, mask_root or path / "masks")
    elif loose and image_root != path:
        samples = _flat_samples(category, loose, mask_root)
    elif loose:
        raise SPGError(
            f"found {len(loose)} images directly in the folder but no good/ or <defect>/ "
            f"sub-folders, so their labels are unknown",
            path=str(path),
            fix=f"sort them into good/ and <defect>/ sub-folders, or move them to images/ "
            f"with masks in masks/ ({FOLDER_LAYOUT})",
        )
    else:
        raise SPGError(
            "folder holds no images", path=str(path), fix=f"lay it out as {FOLDER_LAYOUT} (.png .jpg .jpeg .bmp .tif)"
        )
    return Dataset(name=name or f"folder:{root}", root=str(path), samples=samples)
