"""VisA loader, from the official split file `ROOT/split_csv/1cls.csv`.

ROOT is the extracted VisA folder (VisA_20220922), which holds::

    ROOT/split_csv/1cls.csv                   columns: object,split,label,image,mask
    ROOT/<object>/Data/Images/{Normal,Anomaly}/*.JPG
    ROOT/<object>/Data/Masks/Anomaly/*.png

`split` is train/test, `label` normal/anomaly, and `image`/`mask` are paths
relative to ROOT (mask empty for normal rows). The 1cls split puts all
anomalies in test, so `split="test"` is the auxiliary/target split.

VisA's per-row defect type is not in 1cls.csv, so every anomalous sample has
defect "anomaly". Masks hold small class indices, not 0/255; spg_core.images
reads any value > 0 as anomalous for such masks.

Opening checks that every listed image (and every anomaly's mask) exists,
which is a stat per file: no decoding.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import SPGError
from .mvtec import check_root, missing_mask_error, splits_for
from .sample import Dataset, Sample

SPLIT_CSV = Path("split_csv") / "1cls.csv"
REQUIRED_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}

VISA_LAYOUT_FIX = (
    "point visa: at the extracted VisA folder (VisA_20220922), which contains split_csv/1cls.csv "
    "and the <object>/Data/ folders. If 1cls.csv is missing, copy split_csv/1cls.csv from the VisA "
    "repository (github.com/amazon-science/spot-diff) into ROOT/split_csv/. If you already ran that "
    "repository's utils/prepare_data.py (--split-type 1cls), its output (VisA_pytorch/1cls) is in "
    "MVTec layout: open it with mvtec:PATH instead"
)


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows of 1cls.csv with lower-cased, stripped keys; SPGError if columns are missing."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip().lower() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise SPGError(
                    f"VisA split file lacks column(s) {missing}; found {header}",
                    path=str(csv_path),
                    fix="use the official 1cls.csv (columns object,split,label,image,mask)",
                )
            return [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SPGError(
            f"cannot read the VisA split file ({exc})",
            path=str(csv_path),
            fix="re-copy split_csv/1cls.csv from the VisA release",
        ) from None


def _row_sample(root: Path, csv_path: Path, line: int, row: dict[str, str]) -> Sample:
    """One 1cls.csv row -> Sample, checking the label and that the files exist."""
    label_text = row["label"].lower()
    if label_text not in _LABELS or row["split"] not in ("train", "test"):
        raise SPGError(
            f"line {line} of the VisA split file has split={row['split']!r} "
            f"label={row['label']!r}; expected split train/test and label normal/anomaly",
            path=str(csv_path),
            fix="restore the official 1cls.csv",
        )
    image = root / row["image"]
    if not image.is_file():
        raise SPGError(
            f"image listed on line {line} of {csv_path} does not exist",
            path=str(image),
            fix="the VisA folder is incomplete or ROOT is wrong: re-extract VisA_20220922.tar "
            "and point visa: at the folder holding split_csv/",
        )
    label = _LABELS[label_text]
    mask: str | None = None
    if label == 1:
        mask_path = root / row["mask"] if row["mask"] else None
        if mask_path is None or not mask_path.is_file():
            default = root / row["object"] / "Data" / "Masks" / "Anomaly" / f"{image.stem}.png"
            expected = mask_path or default
            raise missing_mask_error(image, expected)
        mask = str(mask_path)
    return Sample(str(image), mask, label, row["object"], "anomaly" if label else "good", row["split"])


def load_visa(root: str | os.PathLike, split: str = "test", name: str | None = None) -> Dataset:
    """Open VisA from ROOT/split_csv/1cls.csv; `split` is 'test', 'train' or 'all'."""
    splits = splits_for(split)
    path = check_root(root, "VisA")
    csv_path = path / SPLIT_CSV
    if not csv_path.is_file():
        raise SPGError("not a VisA root: split_csv/1cls.csv is missing", path=str(csv_path), fix=VISA_LAYOUT_FIX)
    samples = []
    for i, row in enumerate(_read_rows(csv_path)):
        # Rows with an invalid split value go through _row_sample too, so they get reported.
        if row["split"] in splits or row["split"] not in ("train", "test"):
            samples.append(_row_sample(path, csv_path, i + 2, row))  # +2: the header is line 1
    if not samples:
        raise SPGError(
            f"the VisA split file lists no {split} images", path=str(csv_path), fix="restore the official 1cls.csv"
        )
    return Dataset(name=name or f"visa:{root}", root=str(path), samples=samples)
