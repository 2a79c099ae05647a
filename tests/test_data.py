"""Dataset loaders (MVTec, VisA, folder, synthetic) and their errors."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spg_core.data import (
    DATASET_HELP,
    DATASET_KINDS,
    DEFECT_KINDS,
    SYNTHETIC_GROUPS,
    Dataset,
    generate_synthetic,
    open_dataset,
)
from spg_core.data.synthetic import CATEGORIES, MARKER, OBJECTS, TEXTURES, synthetic_root
from spg_core.errors import SPGError
from spg_core.images import image_to_tensor, load_image, load_mask, mask_to_tensor


def _find_realdata() -> Path:
    """shared/realdata beside the checkout (as in CI), or $SPG_REALDATA."""
    env = os.environ.get("SPG_REALDATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "realdata"


REALDATA = _find_realdata()
needs_realdata = pytest.mark.skipif(not (REALDATA / "mvtec_ad" / "bottle").is_dir(), reason="realdata not available")


def _img(path: Path, size=(32, 24), value=128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _mask(path: Path, size=(32, 24), scale=255, empty=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size[::-1], np.uint8)
    if not empty:
        m[5:10, 5:12] = scale
    Image.fromarray(m).save(path)
    return path


def _raises(fn, *needles: str) -> str:
    """Call fn, expect SPGError whose message contains every needle; return the message."""
    with pytest.raises(SPGError) as e:
        fn()
    msg = str(e.value)
    for n in needles:
        assert n in msg, f"{n!r} not in error message:\n{msg}"
    return msg


# ----------------------------------------------------------------------------- real data


@needs_realdata
def test_realdata_mvtec_bottle():
    ds = open_dataset(f"mvtec:{REALDATA / 'mvtec_ad'}")
    assert ds.categories == ["bottle"] and ds.name == f"mvtec:{REALDATA / 'mvtec_ad'}"
    assert ds.counts()["bottle"] == {"broken_large": 20, "broken_small": 22, "contamination": 21, "good": 20}
    assert all((s.mask_path is None) == (s.label == 0) for s in ds.samples)
    assert all(os.path.isfile(s.mask_path) for s in ds.samples if s.label)
    assert len(open_dataset(f"mvtec:{REALDATA / 'mvtec_ad'}", split="train")) == 209
    assert len(open_dataset(f"mvtec:{REALDATA / 'mvtec_ad'}", split="all")) == 209 + 83


@needs_realdata
def test_realdata_category_folder_directly_and_decode():
    ds = open_dataset(f"mvtec:{REALDATA / 'mvtec_ad' / 'bottle'}")
    assert len(ds) == 83 and ds.categories == ["bottle"]
    anomalous = ds.filter(label=1)
    sample = anomalous.samples[0]
    img = load_image(sample.image_path)
    mask = mask_to_tensor(load_mask(sample.mask_path, img.size, image_path=sample.image_path), 64)
    assert image_to_tensor(img, 64).shape == (3, 64, 64) and mask.sum() > 0


@needs_realdata
def test_realdata_magnetic_tile():
    ds = open_dataset(f"mvtec:{REALDATA / 'magnetic_tile'}")
    assert ds.categories == ["magnetic_tile"]
    counts = ds.counts()["magnetic_tile"]
    assert counts.pop("good") == 120 and sum(counts.values()) == 269
    assert counts == {"blowhole": 70, "break": 65, "crack": 42, "fray": 25, "uneven": 67}
    assert len(open_dataset(f"mvtec:{REALDATA / 'magnetic_tile'}", split="train")) == 200
    s = ds.filter(label=1).samples[0]
    img = load_image(s.image_path)  # grayscale JPEG -> RGB
    assert img.mode == "RGB" and load_mask(s.mask_path, img.size).any()


@needs_realdata
def test_realdata_mislaid_points_to_the_right_folder():
    test_dir = REALDATA / "mvtec_ad" / "bottle" / "test"
    msg = _raises(lambda: open_dataset(f"mvtec:{test_dir}"), str(test_dir), "bottle")
    assert f"mvtec:{REALDATA / 'mvtec_ad'}" in msg
    # one level too high: points at the datasets inside
    msg = _raises(lambda: open_dataset(f"mvtec:{REALDATA}"), str(REALDATA), "mvtec_ad/")
    assert f"mvtec:{REALDATA / 'magnetic_tile'}" in msg


# ----------------------------------------------------------------------------- MVTec errors


def _mini_mvtec(root: Path) -> Path:
    cat = root / "widget"
    _img(cat / "train" / "good" / "000.png")
    _img(cat / "test" / "good" / "000.PNG")
    _img(cat / "test" / "dent" / "000.jpg")
    _mask(cat / "ground_truth" / "dent" / "000_mask.png")
    _img(cat / "test" / "dent" / "001.bmp")
    _mask(cat / "ground_truth" / "dent" / "001.png")  # <stem>.png also accepted
    (cat / "test" / "dent" / ".DS_Store").write_text("x")
    (cat / "readme.txt").write_text("ignored")
    return root


def test_mvtec_mini_layout(tmp_path):
    ds = open_dataset(f"mvtec:{_mini_mvtec(tmp_path / 'ds')}")
    assert ds.counts() == {"widget": {"dent": 2, "good": 1}}
    assert ds.filter(label=1).defects == ["dent"] and len(ds.filter(categories="nope")) == 0


def test_mvtec_anomalous_without_mask(tmp_path):
    root = _mini_mvtec(tmp_path / "ds")
    bad = _img(root / "widget" / "test" / "dent" / "002.png")
    expected = root / "widget" / "ground_truth" / "dent" / "002_mask.png"
    _raises(lambda: open_dataset(f"mvtec:{root}"), str(bad), str(expected))


def test_missing_path(tmp_path):
    _raises(lambda: open_dataset(f"mvtec:{tmp_path / 'absent'}"), str(tmp_path / "absent"))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    for kind in ("mvtec", "folder"):
        _raises(lambda kind=kind: open_dataset(f"{kind}:{tmp_path / 'empty'}"), str(tmp_path / "empty"), "empty")


def test_mislaid_inside_category(tmp_path):
    root = _mini_mvtec(tmp_path / "ds")
    cat = root / "widget"
    for inner in (cat / "test", cat / "test" / "dent", cat / "ground_truth"):
        msg = _raises(lambda inner=inner: open_dataset(f"mvtec:{inner}"), str(inner))
        assert f"mvtec:{root}" in msg and f"mvtec:{root / 'widget'}" in msg


def test_mislaid_images_without_train_test(tmp_path):
    _img(tmp_path / "flat" / "good" / "a.png")
    _img(tmp_path / "flat" / "b.png")
    msg = _raises(lambda: open_dataset(f"mvtec:{tmp_path / 'flat'}"), str(tmp_path / "flat"), "train")
    assert "folder:" in msg


def test_images_loose_in_split_folder(tmp_path):
    _img(tmp_path / "ds" / "cat" / "test" / "x.png")
    _raises(lambda: open_dataset(f"mvtec:{tmp_path / 'ds'}"), str(tmp_path / "ds" / "cat" / "test"), "good")


def test_unknown_spec_and_split(tmp_path):
    msg = _raises(lambda: open_dataset("imagenet:/data"), "imagenet:/data")
    for form in ("mvtec:PATH", "visa:PATH", "folder:PATH", "synthetic-a", "synthetic-b"):
        assert form in msg and form in DATASET_KINDS and form in DATASET_HELP
    _raises(lambda: open_dataset(str(tmp_path)), "mvtec:")  # bare folder: suggests a prefix
    _raises(lambda: open_dataset("mvtec:"), "mvtec:")
    _raises(lambda: open_dataset(f"mvtec:{tmp_path}", split="val"), "val")


# ----------------------------------------------------------------------------- VisA


def _fake_visa(root: Path) -> Path:
    rows = []
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _img(root / rel)
            rows.append([obj, "train" if i < 2 else "test", "normal", rel, ""])
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _img(root / rel)
            _mask(root / mrel, scale=1 + i)  # VisA masks hold class indices, not 255
            rows.append([obj, "test", "anomaly", rel, mrel])
    (root / "split_csv").mkdir(parents=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root


def test_visa_fake_tree(tmp_path):
    root = _fake_visa(tmp_path / "VisA")
    ds = open_dataset(f"visa:{root}")
    assert ds.categories == ["candle", "pcb1"]
    assert ds.counts() == {"candle": {"anomaly": 2, "good": 1}, "pcb1": {"anomaly": 2, "good": 1}}
    assert len(open_dataset(f"visa:{root}", split="train")) == 4
    assert len(open_dataset(f"visa:{root}", split="all")) == 10
    for s in ds.filter(label=1):
        assert load_mask(s.mask_path, (32, 24)).sum() == 35  # 0/1 and 0/2 masks detected


def test_visa_missing_csv(tmp_path):
    (tmp_path / "VisA" / "candle").mkdir(parents=True)
    _raises(
        lambda: open_dataset(f"visa:{tmp_path / 'VisA'}"),
        "split_csv/1cls.csv",
        "prepare_data.py",
        str(tmp_path / "VisA"),
    )


def test_visa_missing_mask(tmp_path):
    root = _fake_visa(tmp_path / "VisA")
    gone = root / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png"
    gone.unlink()
    _raises(lambda: open_dataset(f"visa:{root}"), str(root / "pcb1/Data/Images/Anomaly/001.JPG"), str(gone))


# ----------------------------------------------------------------------------- folder


def test_folder_sorted_layout(tmp_path):
    root = tmp_path / "gasket"
    _img(root / "good" / "a.png")
    _img(root / "good" / "b.jpeg")
    _img(root / "scratch" / "c.png")
    _mask(root / "masks" / "scratch" / "c_mask.png")
    ds = open_dataset(f"folder:{root}")
    assert ds.categories == ["gasket"] and ds.counts() == {"gasket": {"good": 2, "scratch": 1}}
    assert all(s.split == "test" for s in ds)
    _raises(lambda: open_dataset(f"folder:{root}", split="train"), str(root), "train")


def test_folder_images_masks_layout(tmp_path):
    root = tmp_path / "belt"
    for name in ("a", "b", "c"):
        _img(root / "images" / f"{name}.png")
    _mask(root / "masks" / "a_mask.png")
    _mask(root / "masks" / "b.png", empty=True)  # all-black mask: a good image
    ds = open_dataset(f"folder:{root}")
    assert [(Path(s.image_path).stem, s.label) for s in ds] == [("a", 1), ("b", 0), ("c", 0)]
    assert ds.samples[1].mask_path is None


def test_folder_anomaly_without_mask(tmp_path):
    root = tmp_path / "gasket"
    _img(root / "good" / "a.png")
    bad = _img(root / "dent" / "x.png")
    _raises(lambda: open_dataset(f"folder:{root}"), str(bad), str(root / "masks" / "dent" / "x_mask.png"))


def test_folder_mislaid(tmp_path):
    _img(tmp_path / "loose" / "a.png")
    _raises(lambda: open_dataset(f"folder:{tmp_path / 'loose'}"), str(tmp_path / "loose"), "good/")
    root = _mini_mvtec(tmp_path / "ds")
    _raises(lambda: open_dataset(f"folder:{root}"), "mvtec:")


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synth_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("spg_cache")
    open_dataset("synthetic-a", cache_dir=str(cache))  # generates everything once
    return cache


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_synthetic_groups(synth_cache):
    assert len(CATEGORIES) >= 8 and len(DEFECT_KINDS) >= 5
    a, b = (set(SYNTHETIC_GROUPS[g]) for g in ("synthetic-a", "synthetic-b"))
    assert a.isdisjoint(b) and a | b == set(CATEGORIES)
    for group, cats in SYNTHETIC_GROUPS.items():
        assert set(cats) & set(TEXTURES) and set(cats) & set(OBJECTS)
        ds = open_dataset(group, cache_dir=str(synth_cache))
        assert isinstance(ds, Dataset) and ds.name == group and ds.categories == sorted(cats)
        for cat, counts in ds.counts().items():
            assert counts == {"good": 10, **{d: 4 for d in DEFECT_KINDS}}, cat
        assert set(ds.filter(label=1).defects) == set(DEFECT_KINDS)
        assert len(open_dataset(group, split="train", cache_dir=str(synth_cache))) == 4 * len(cats)
    assert len(open_dataset("synthetic", cache_dir=str(synth_cache)).categories) == len(CATEGORIES)


def test_synthetic_masks(synth_cache):
    ds = open_dataset("synthetic", split="all", cache_dir=str(synth_cache))
    for s in ds:
        if s.label == 0:
            assert s.mask_path is None
            continue
        with Image.open(s.image_path) as im:
            assert im.size == (256, 256) and im.mode == "RGB"
        mask = load_mask(s.mask_path, (256, 256))
        assert mask.any(), f"empty mask {s.mask_path}"
        with Image.open(s.mask_path) as m:
            assert set(np.unique(np.asarray(m)).tolist()) <= {0, 255}
    areas = [load_mask(s.mask_path, (256, 256)).mean() for s in ds.filter(label=1)]
    assert min(areas) < 0.002 and max(areas) > 0.01, "defect scale should vary widely"


def test_synthetic_is_deterministic(synth_cache, tmp_path):
    # A second, smaller generation must reproduce the same files byte for byte:
    # every image has its own seed, so order and counts do not matter.
    full = synthetic_root(synth_cache)
    small = generate_synthetic(
        tmp_path / "again", n_train_good=1, n_test_good=1, n_per_defect=1, categories=("weave", "nut"), workers=1
    )
    small_h, full_h = _hashes(small), _hashes(full)
    shared = [k for k in small_h if k != MARKER]
    assert len(shared) == 2 * (2 + 2 * len(DEFECT_KINDS))
    assert all(small_h[k] == full_h[k] for k in shared)
    other_seed = generate_synthetic(
        tmp_path / "seed1", seed=1, n_train_good=1, n_test_good=0, n_per_defect=0, categories=("weave",)
    )
    assert _hashes(other_seed)["weave/train/good/000.png"] != full_h["weave/train/good/000.png"]


def test_synthetic_marker_reuse_and_regenerate(synth_cache):
    root = synthetic_root(synth_cache)
    marker = root / MARKER
    before = marker.stat().st_mtime_ns
    generate_synthetic(root)  # up to date: nothing rewritten
    assert marker.stat().st_mtime_ns == before
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".")], "no temp dirs left"


def test_synthetic_stale_marker_regenerates(tmp_path):
    root = generate_synthetic(tmp_path / "s", n_train_good=1, n_test_good=0, n_per_defect=0, categories=("disc",))
    marker = root / MARKER
    marker.write_text(marker.read_text().replace('"generator_version": ', '"generator_version": -'))
    (root / "junk.txt").write_text("left by an old generator")
    generate_synthetic(root, n_train_good=1, n_test_good=0, n_per_defect=0, categories=("disc",))
    assert not (root / "junk.txt").exists() and (root / "disc" / "train" / "good" / "000.png").is_file()
