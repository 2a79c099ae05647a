"""MVTec AD layout loader (also used for the synthetic set and other MVTec-style data).

Accepted layout (ROOT is what `mvtec:ROOT` names)::

    ROOT/CATEGORY/train/good/*.png
    ROOT/CATEGORY/test/good/*.png
    ROOT/CATEGORY/test/<defect>/<stem>.png
    ROOT/CATEGORY/ground_truth/<defect>/<stem>_mask.png     (or <stem>.png)

ROOT may also be one category folder itself (e.g. .../mvtec_ad/bottle).
Categories are the sub-folders holding a train/ or test/ folder. Images may be
.png .jpg .jpeg .bmp .tif .tiff in any letter case; hidden files are ignored.
Every image outside good/ is anomalous and must have a mask: a missing one is an
SPGError naming the image and the expected mask path.

Opening only lists folders (no decoding), so it is cheap; corrupt files and
mask/image size mismatches surface when the images are loaded (spg_core.images).
The small listing helpers here are shared with the folder and VisA loaders.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import SPGError
from .sample import Dataset, Sample

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
SPLIT_DIRS = ("train", "test")
GOOD = "good"

MVTEC_LAYOUT = (
    "ROOT/CATEGORY/train/good/*.png, ROOT/CATEGORY/test/{good,<defect>}/*.png and "
    "ROOT/CATEGORY/ground_truth/<defect>/<stem>_mask.png (ROOT may also be one CATEGORY folder)"
)


# --------------------------------------------------------------------------- listing helpers


def is_image_name(name: str) -> bool:
    """True for a visible file name with an accepted image extension (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; [] if it is not a folder."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if is_image_name(e.name) and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in sorted(names)]


def list_subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of `folder`, sorted by name."""
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in sorted(names)]


def index_masks(folder: Path) -> dict[str, Path]:
    """{file stem: path} of the mask images in `folder` ({} when it does not exist)."""
    return {p.stem: p for p in list_images(folder)}


def find_mask(masks: dict[str, Path], stem: str) -> Path | None:
    """The mask for image `stem`: `<stem>_mask.*` first (MVTec), then `<stem>.*`."""
    return masks.get(f"{stem}_mask") or masks.get(stem)


def missing_mask_error(image: Path, expected: Path) -> SPGError:
    return SPGError(
        f"anomalous image has no ground-truth mask; expected it at {expected}",
        path=str(image),
        fix=f"add the mask (same size as the image, anomalous pixels white) at {expected}, "
        f"or move the image to good/ if it is normal, or delete it",
    )


def check_root(root: str | os.PathLike, kind: str) -> Path:
    """Absolute path of an existing dataset folder, or an SPGError saying what is wrong."""
    path = Path(os.path.abspath(os.path.expanduser(str(root))))
    if not path.exists():
        raise SPGError(
            f"{kind} dataset folder does not exist",
            path=str(path),
            fix="check the path (typo? not mounted? not extracted yet?)",
        )
    if not path.is_dir():
        raise SPGError(
            f"{kind} dataset path is a file, not a folder", path=str(path), fix="point at the dataset's root folder"
        )
    return path


# --------------------------------------------------------------------------- layout


def is_category_dir(folder: Path) -> bool:
    """A category folder holds train/ or test/."""
    return any((folder / s).is_dir() for s in SPLIT_DIRS)


def find_categories(root: Path) -> list[Path]:
    """Category folders under `root` (or [root] when it is one); SPGError if none."""
    if is_category_dir(root):
        return [root]
    cats = [d for d in list_subdirs(root) if is_category_dir(d)]
    if not cats:
        raise layout_error(root)
    return cats


def _describe(root: Path, limit: int = 8) -> str:
    """A short listing of `root` for error messages."""
    try:
        names = sorted(n for n in os.listdir(root) if not n.startswith("."))
    except OSError:
        return "(unreadable)"
    shown = [n + ("/" if (root / n).is_dir() else "") for n in names[:limit]]
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(shown) + more if shown else "nothing"


def layout_error(root: Path) -> SPGError:
    """Explain why `root` is not an MVTec-layout root, and where the right folder probably is."""
    listing = _describe(root)
    if listing == "nothing":
        return SPGError(
            "dataset folder is empty", path=str(root), fix=f"put the dataset there, laid out as {MVTEC_LAYOUT}"
        )
    # Pointed inside a category (at test/, test/good/, ground_truth/...)? Walk up to find it.
    for up in (root.parent, root.parent.parent, root.parent.parent.parent):
        if up != root and is_category_dir(up):
            return SPGError(
                f"this is a folder inside the category '{up.name}' (found: {listing}), not a dataset root",
                path=str(root),
                fix=f"point at the dataset root mvtec:{up.parent} (all categories) or at the category mvtec:{up}",
            )
    # Pointed one level too high (at a folder of datasets)?
    nested = [d for d in list_subdirs(root) if any(is_category_dir(c) for c in list_subdirs(d))]
    if nested:
        return SPGError(
            f"no category folder here, but {', '.join(d.name + '/' for d in nested[:6])} hold MVTec-layout datasets",
            path=str(root),
            fix=f"point at one of them, e.g. mvtec:{nested[0]}",
        )
    n_direct = len(list_images(root))
    with_images = [d.name for d in list_subdirs(root) if list_images(d)]
    if n_direct or with_images:
        found = f"{n_direct} images directly inside" if n_direct else f"image folders {', '.join(with_images[:6])}"
        return SPGError(
            f"found {found} but no CATEGORY/train or CATEGORY/test folder",
            path=str(root),
            fix=f"lay it out as {MVTEC_LAYOUT}; for a single folder of good/ and <defect>/ "
            f"sub-folders use folder:{root} instead",
        )
    return SPGError(
        f"no category folder with train/ or test/ found (found: {listing})",
        path=str(root),
        fix=f"point at a folder laid out as {MVTEC_LAYOUT}",
    )


# --------------------------------------------------------------------------- loading


def _defect_samples(cat_dir: Path, split: str, defect_dir: Path) -> list[Sample]:
    """Samples of one ROOT/CATEGORY/<split>/<defect>/ folder, masks resolved."""
    defect = defect_dir.name
    images = list_images(defect_dir)
    if defect == GOOD:
        return [Sample(str(p), None, 0, cat_dir.name, GOOD, split) for p in images]
    gt_dir = cat_dir / "ground_truth" / defect
    masks = index_masks(gt_dir)
    out = []
    for p in images:
        mask = find_mask(masks, p.stem)
        if mask is None:
            raise missing_mask_error(p, gt_dir / f"{p.stem}_mask.png")
        out.append(Sample(str(p), str(mask), 1, cat_dir.name, defect, split))
    return out


def load_category(cat_dir: Path, splits: Iterable[str]) -> list[Sample]:
    """All samples of one category folder for the given splits (train before test)."""
    samples: list[Sample] = []
    for split in splits:
        split_dir = cat_dir / split
        if not split_dir.is_dir():
            continue
        loose = list_images(split_dir)
        if loose:
            raise SPGError(
                f"found {len(loose)} images directly in {split}/; they must be in sub-folders "
                f"({split}/good/ for normal images, {split}/<defect>/ for anomalous ones)",
                path=str(split_dir),
                fix=f"move them into {split_dir / GOOD} or {split_dir}/<defect>/",
            )
        for defect_dir in list_subdirs(split_dir):
            samples.extend(_defect_samples(cat_dir, split, defect_dir))
    return samples


def splits_for(split: str) -> tuple[str, ...]:
    """'train' | 'test' | 'all' -> the split folders to read."""
    if split == "all":
        return SPLIT_DIRS
    if split in SPLIT_DIRS:
        return (split,)
    raise SPGError(f"unknown split {split!r}", fix="use 'test' (the default), 'train' or 'all'")


def load_mvtec(root: str | os.PathLike, split: str = "test", name: str | None = None) -> Dataset:
    """Open an MVTec-layout dataset; `split` is 'test', 'train' or 'all'."""
    splits = splits_for(split)
    path = check_root(root, "MVTec-layout")
    samples: list[Sample] = []
    for cat_dir in find_categories(path):
        samples.extend(load_category(cat_dir, splits))
    if not samples:
        raise SPGError(
            f"no {split} images found under any category's {'/ or '.join(splits)}/ folder",
            path=str(path),
            fix=f"check the layout: {MVTEC_LAYOUT}",
        )
    return Dataset(name=name or f"mvtec:{root}", root=str(path), samples=samples)
