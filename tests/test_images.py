"""Image/mask IO: every mode becomes RGB, masks binarise correctly, bad files raise SPGError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from spg_core.data.sample import Sample
from spg_core.errors import SPGError
from spg_core.images import MaskWarning, image_to_tensor, load_image, load_mask, mask_has_anomaly, mask_to_tensor


def _save(tmp_path: Path, name: str, img: Image.Image, **kw) -> Path:
    path = tmp_path / name
    img.save(path, **kw)
    return path


def _rgb(path: Path) -> np.ndarray:
    img = load_image(path)
    assert img.mode == "RGB"
    return np.asarray(img)


# ----------------------------------------------------------------------------- conversions


def test_grayscale_becomes_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    arr = _rgb(_save(tmp_path, "g.png", Image.fromarray(gray)))
    assert arr.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(arr[..., c], gray)


def test_one_bit_becomes_rgb(tmp_path):
    img = Image.fromarray(np.eye(6, dtype=bool))
    arr = _rgb(_save(tmp_path, "b.png", img))
    assert set(np.unique(arr)) == {0, 255}


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[..., 3] = 0  # fully transparent: colour is kept, not blackened
    arr = _rgb(_save(tmp_path, "a.png", Image.fromarray(rgba, "RGBA")))
    assert (arr == [200, 100, 50]).all()


def test_la_drops_alpha(tmp_path):
    la = Image.merge("LA", (Image.new("L", (5, 5), 77), Image.new("L", (5, 5), 0)))
    assert (_rgb(_save(tmp_path, "la.png", la)) == 77).all()


def test_palette_becomes_rgb(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    pal.putdata([0, 1, 2, 1, 0, 1, 2, 1])
    arr = _rgb(_save(tmp_path, "p.png", pal))
    assert tuple(arr[0, 1]) == (255, 0, 0) and tuple(arr[0, 2]) == (0, 0, 255)


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (3, 3))
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * (254 * 3))
    pal.putdata([0, 1, 0, 1, 0, 1, 0, 1, 0])
    arr = _rgb(_save(tmp_path, "pt.png", pal, transparency=0))
    assert tuple(arr[0, 0]) == (10, 20, 30) and tuple(arr[0, 1]) == (40, 50, 60)


def test_cmyk_becomes_rgb(tmp_path):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    arr = _rgb(_save(tmp_path, "c.jpg", cmyk, quality=100))
    assert arr[..., 0].min() > 200 and arr[..., 1].max() < 60


def test_16bit_gradient_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 512).round().astype(np.uint16)
    img = Image.fromarray(np.tile(ramp, (4, 1)))
    assert img.mode == "I;16"
    arr = _rgb(_save(tmp_path, "g16.png", img))[0, :, 0].astype(int)
    assert arr[0] == 0 and arr[-1] == 255
    assert (np.diff(arr) >= 0).all(), "16-bit ramp must map monotonically"
    assert len(np.unique(arr)) == 256, "all 8-bit levels used: scaled, not clipped"
    assert abs(int(arr[256]) - 128) <= 1, "mid-grey stays mid-grey"


def test_16bit_big_endian_and_32bit(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(">u2").reshape(8, 8)
    big = Image.frombytes("I;16B", (8, 8), ramp.tobytes())
    arr = _rgb(_save(tmp_path, "b16.tif", big))[..., 0]
    assert arr.min() == 0 and arr.max() == 255
    wide = Image.fromarray(np.linspace(-1000, 200000, 64).astype(np.int32).reshape(8, 8), "I")
    arr = _rgb(_save(tmp_path, "i32.tif", wide))[..., 0]
    assert arr.min() == 0 and arr.max() == 255 and (np.diff(arr.ravel().astype(int)) >= 0).all()


# ----------------------------------------------------------------------------- bad files


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "noise.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(SPGError) as e:
        load_image(bad)
    assert str(bad) in str(e.value) and "fix" in str(e.value)


def test_truncated_png_names_the_file(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = _save(tmp_path, "trunc.png", img)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SPGError) as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(SPGError) as e:
        load_image(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(e.value)


# ----------------------------------------------------------------------------- masks


def test_mask_255_and_01_and_rgb_and_16bit(tmp_path):
    m = np.zeros((6, 8), np.uint8)
    m[2:4, 3:6] = 1
    truth = m.astype(bool)
    for name, img in {
        "m255.png": Image.fromarray(m * 255),
        "m01.png": Image.fromarray(m),  # VisA-style 0/1
        "mred.png": Image.fromarray(np.stack([m * 255, 0 * m, 0 * m], -1)),  # red on black
        "m16.png": Image.fromarray(m.astype(np.uint16) * 65535),
        "m1.png": Image.fromarray(truth),
    }.items():
        got = load_mask(_save(tmp_path, name, img), (8, 6))
        assert got.dtype == bool and got.shape == (6, 8)
        np.testing.assert_array_equal(got, truth, err_msg=name)


def test_soft_mask_thresholds_at_127(tmp_path):
    m = np.array([[0, 100, 127, 128, 255]], np.uint8)
    got = load_mask(_save(tmp_path, "soft.png", Image.fromarray(m)), (5, 1))
    assert got.tolist() == [[False, False, False, True, True]]


def test_mask_size_mismatch_names_both(tmp_path):
    path = _save(tmp_path, "small_mask.png", Image.new("L", (10, 12)))
    with pytest.raises(SPGError) as e:
        load_mask(path, (20, 24), image_path="/data/img.png")
    msg = str(e.value)
    assert str(path) in msg and "/data/img.png" in msg and "10x12" in msg and "20x24" in msg


def test_mask_has_anomaly(tmp_path):
    empty = _save(tmp_path, "e.png", Image.new("L", (4, 4)))
    full = _save(tmp_path, "f.png", Image.new("L", (4, 4), 255))
    assert not mask_has_anomaly(empty) and mask_has_anomaly(full)


# ----------------------------------------------------------------------------- tensors


def test_image_to_tensor_shape_range_and_antialias():
    checker = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    img = Image.fromarray(np.stack([checker] * 3, -1))
    t = image_to_tensor(img, 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 1
    # antialiased downscale of a 1-px checkerboard is flat grey, not aliased black/white
    assert (t - 0.5).abs().max() < 0.05


def test_image_to_tensor_identity_and_grayscale():
    arr = np.random.default_rng(0).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    t = image_to_tensor(Image.fromarray(arr), 10)
    np.testing.assert_allclose(t.permute(1, 2, 0).numpy(), arr / 255.0, atol=1e-6)
    assert image_to_tensor(Image.new("L", (7, 5), 128), 8).shape == (3, 8, 8)


def test_mask_to_tensor_nearest():
    m = np.zeros((8, 8), bool)
    m[:4, :4] = True
    t = mask_to_tensor(m, 4)
    assert t.shape == (4, 4) and t.dtype == torch.float32
    assert set(t.unique().tolist()) <= {0.0, 1.0}
    assert t[:2, :2].eq(1).all() and t[2:, :].eq(0).all()
    assert mask_to_tensor(m, 16).sum() == 64


# ----------------------------------------------------------------------------- decoding a sample


def _tiny_samples(tmp_path: Path, mask_size=(20, 16)) -> list[Sample]:
    good = _save(tmp_path, "good.png", Image.new("RGB", (20, 16), (10, 20, 30)))
    bad = _save(tmp_path, "bad.png", Image.new("L", (20, 16), 90))
    m = np.zeros(mask_size[::-1], np.uint8)
    m[4:8, 5:10] = 255
    mask = _save(tmp_path, "bad_mask.png", Image.fromarray(m))
    return [Sample(str(good), None, 0, "c", "good", "test"), Sample(str(bad), str(mask), 1, "c", "dent", "test")]


def test_mask_size_mismatch_names_both_files(tmp_path):
    samples = _tiny_samples(tmp_path, mask_size=(10, 8))
    img = load_image(samples[1].image_path)
    with pytest.raises(SPGError) as e:
        load_mask(samples[1].mask_path, img.size, image_path=samples[1].image_path)
    assert samples[1].mask_path in str(e.value) and samples[1].image_path in str(e.value)


def test_faint_noise_mask_is_normal_with_a_warning(tmp_path):
    """Issue tour: values 1-5 on black over most of the image were read as 83% anomalous."""
    rng = np.random.default_rng(0)
    noise = np.where(rng.random((40, 50)) < 0.83, rng.integers(1, 6, (40, 50)), 0).astype(np.uint8)
    path = _save(tmp_path, "noise.png", Image.fromarray(noise))
    with pytest.warns(MaskWarning, match="noise.png"):
        assert not load_mask(path, (50, 40)).any()
    with pytest.warns(MaskWarning):
        assert not mask_has_anomaly(path)


def test_label_masks_with_several_class_indices_stay_anomalous(tmp_path):
    m = np.zeros((20, 20), np.uint8)
    m[2:6, 2:6], m[10:14, 10:16] = 1, 3  # two defects, VisA-style class indices
    got = load_mask(_save(tmp_path, "idx.png", Image.fromarray(m)), (20, 20))
    np.testing.assert_array_equal(got, m > 0)


@pytest.mark.parametrize("size", [7, 32, 112])
def test_official_mask_resize_is_torchvision_resize_on_the_pil_mask(size):
    """The official target transform, written out independently: Resize((S, S)) on the 0/255 PIL
    mask, ToTensor, then the evaluator's > 0.5."""
    rng = np.random.default_rng(size)
    mask = np.zeros((83, 61), bool)
    for _ in range(6):  # blobs and one-pixel lines: where bilinear-without-antialias differs
        y, x = rng.integers(0, 70), rng.integers(0, 50)
        mask[y : y + rng.integers(1, 14), x : x + rng.integers(1, 12)] = True
    mask[:, 30] = True
    official = transforms.Compose([transforms.Resize((size, size)), transforms.CenterCrop((size, size))])
    expected = transforms.ToTensor()(official(Image.fromarray(mask.astype(np.uint8) * 255)))[0] > 0.5
    got = mask_to_tensor(mask, size, "bilinear")
    assert torch.equal(got, expected.float())
