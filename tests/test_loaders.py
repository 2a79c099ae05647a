"""One contract for every dataset loader (MVTec, VisA, folder, synthetic), in the style of anomalib's
shared datamodule tests: `LoaderContract` holds the assertions every loader must pass, and one small
subclass per loader says how to build a small data set of its layout and what it should hold.

Loader-specific behaviour (layout variants, mislaid folders, VisA's CSV) stays in test_data.py.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spg_core.data import SYNTHETIC_GROUPS, open_dataset
from spg_core.data.synthetic import synthetic_root
from spg_core.errors import SPGError
from spg_core.images import load_image, load_mask

SIZE = (40, 30)


def _img(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", SIZE, (value, value // 2, 255 - value)).save(path)
    return path


def _mask(path: Path, scale: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(SIZE[::-1], np.uint8)
    m[4:9, 6:14] = scale
    Image.fromarray(m).save(path)
    return path


class LoaderContract:
    """What every loader guarantees. Subclasses set `expected` and implement `build` and `drop_mask`."""

    expected: dict[str, dict[str, int]]  # test split: {category: {defect: count}}

    def build(self, root: Path) -> str:
        """Write a small data set under `root` (or reuse one); return its dataset spec."""
        raise NotImplementedError

    def drop_mask(self, spec: str, tmp_path: Path) -> tuple[str, Path, Path]:
        """A copy of the data set with one anomalous image's mask deleted:
        (spec of the copy, that image, the mask path the error must name)."""
        raise NotImplementedError

    @pytest.fixture
    def spec(self, tmp_path: Path) -> str:
        return self.build(tmp_path / "data")

    def test_counts_per_category_and_defect(self, spec):
        ds = open_dataset(spec)
        assert ds.counts() == self.expected
        assert len(ds) == sum(sum(d.values()) for d in self.expected.values())
        assert ds.categories == sorted(self.expected)

    def test_every_sample_is_consistent(self, spec):
        ds = open_dataset(spec)
        assert ds.name == spec
        for s in ds:
            assert Path(s.image_path).is_file() and Path(s.image_path).is_relative_to(ds.root)
            assert s.label in (0, 1) and s.split == "test"
            assert (s.label == 0) == (s.defect == "good") == (s.mask_path is None)
            if s.mask_path is not None:
                assert Path(s.mask_path).is_file()

    def test_anomalous_masks_mark_pixels_at_the_image_size(self, spec):
        ds = open_dataset(spec)
        anomalous = ds.filter(label=1)
        assert len(anomalous) > 0
        for s in anomalous.samples[:6]:
            img = load_image(s.image_path)
            mask = load_mask(s.mask_path, img.size, image_path=s.image_path)
            assert mask.shape == img.size[::-1] and 0 < mask.sum() < mask.size

    def test_filters_split_the_set(self, spec):
        ds = open_dataset(spec)
        good, bad = ds.filter(label=0), ds.filter(label=1)
        assert len(good) + len(bad) == len(ds)
        first = ds.categories[0]
        assert set(ds.filter(categories=first).categories) == {first}

    def test_missing_mask_is_one_clear_error(self, spec, tmp_path):
        broken, image, mask = self.drop_mask(spec, tmp_path / "copy")
        with pytest.raises(SPGError) as err:
            open_dataset(broken)
        assert str(image) in str(err.value) and str(mask) in str(err.value)


class TestMVTecLoader(LoaderContract):
    expected = {"screw": {"good": 2, "scratch": 2, "thread": 1}, "tile": {"crack": 1, "good": 1}}

    def build(self, root: Path) -> str:
        for cat, defects in self.expected.items():
            _img(root / cat / "train" / "good" / "000.png")
            for defect, n in defects.items():
                for i in range(n):
                    _img(root / cat / "test" / defect / f"{i:03d}.png", 40 * i + 60)
                    if defect != "good":
                        _mask(root / cat / "ground_truth" / defect / f"{i:03d}_mask.png")
        return f"mvtec:{root}"

    def drop_mask(self, spec, tmp_path):
        shutil.copytree(spec.split(":", 1)[1], tmp_path)
        mask = tmp_path / "screw" / "ground_truth" / "scratch" / "001_mask.png"
        mask.unlink()
        return f"mvtec:{tmp_path}", tmp_path / "screw" / "test" / "scratch" / "001.png", mask


class TestVisALoader(LoaderContract):
    expected = {"candle": {"anomaly": 2, "good": 2}, "pcb1": {"anomaly": 3, "good": 1}}

    def build(self, root: Path) -> str:
        rows = []
        for obj, counts in self.expected.items():
            for i in range(counts["good"] + 1):  # one more normal image for train
                rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
                _img(root / rel)
                rows.append([obj, "train" if i == counts["good"] else "test", "normal", rel, ""])
            for i in range(counts["anomaly"]):
                rel, mrel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG", f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
                _img(root / rel, 200)
                _mask(root / mrel, scale=1 + i)  # VisA masks hold class indices
                rows.append([obj, "test", "anomaly", rel, mrel])
        (root / "split_csv").mkdir(parents=True)
        with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
            csv.writer(f).writerows([["object", "split", "label", "image", "mask"], *rows])
        return f"visa:{root}"

    def drop_mask(self, spec, tmp_path):
        shutil.copytree(spec.split(":", 1)[1], tmp_path)
        mask = tmp_path / "pcb1" / "Data" / "Masks" / "Anomaly" / "002.png"
        mask.unlink()
        return f"visa:{tmp_path}", tmp_path / "pcb1" / "Data" / "Images" / "Anomaly" / "002.JPG", mask


class TestFolderLoader(LoaderContract):
    expected = {"gasket": {"dent": 2, "good": 3, "scratch": 1}}

    def build(self, root: Path) -> str:
        root = root / "gasket"
        for defect, n in self.expected["gasket"].items():
            for i in range(n):
                _img(root / defect / f"{i}.png", 30 * i + 50)
                if defect != "good":
                    _mask(root / "masks" / defect / f"{i}_mask.png")
        return f"folder:{root}"

    def drop_mask(self, spec, tmp_path):
        shutil.copytree(spec.split(":", 1)[1], tmp_path / "gasket")
        root = tmp_path / "gasket"
        mask = root / "masks" / "dent" / "1_mask.png"
        mask.unlink()
        return f"folder:{root}", root / "dent" / "1.png", mask


class TestSyntheticLoader(LoaderContract):
    """The built-in set, generated once per session in the session cache (conftest) and shared
    with the end-to-end tests; the broken copy lives in a private cache folder."""

    expected = {
        cat: {"contamination": 4, "crack": 4, "good": 10, "hole": 4, "missing": 4, "scratch": 4, "stain": 4}
        for cat in SYNTHETIC_GROUPS["synthetic-a"]
    }

    def build(self, root: Path) -> str:
        return "synthetic-a"

    def drop_mask(self, spec, tmp_path):
        shutil.copytree(synthetic_root(), synthetic_root(tmp_path))
        root = synthetic_root(tmp_path)
        mask = root / "nut" / "ground_truth" / "hole" / "002_mask.png"
        mask.unlink()
        return spec, root / "nut" / "test" / "hole" / "002.png", mask

    def test_missing_mask_is_one_clear_error(self, spec, tmp_path):
        broken, image, mask = self.drop_mask(spec, tmp_path / "cache")
        with pytest.raises(SPGError) as err:
            open_dataset(broken, cache_dir=str(tmp_path / "cache"))
        assert str(image) in str(err.value) and str(mask) in str(err.value)
