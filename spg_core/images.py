"""Image and mask IO: every file becomes 8-bit RGB (images) or a bool map (masks).

Conversion rules (one place, so every stage sees the same pixels):

* Images are always returned as 8-bit RGB PIL images.
  - L / 1 / P / CMYK / YCbCr / LAB / HSV: converted with PIL's own colour maths.
  - Alpha (RGBA, LA, PA, P with transparency) is DROPPED, not composited: the
    colour channels are what the camera recorded; an alpha channel in an
    inspection image is an export artefact, and compositing on black would
    paint a black region that the model would read as a defect.
  - 16-bit (I;16, I;16B, I;16L) and 32-bit integer (I) images are scaled
    linearly from the container's range 0..65535 onto 0..255 (value / 257).
    A fixed scale rather than a per-image min-max stretch keeps intensities
    comparable between images (a uniformly darker part stays darker).
    I images with values outside 0..65535 and float (F) images are stretched
    from their own min..max, since they have no fixed range.
  - EXIF orientation is NOT applied: masks are stored in the file's pixel
    orientation, and rotating only the image would misalign them.
* Masks are single-channel; pixel (y, x) is anomalous when its value is above
  half the container range (>127 for 8-bit, >32767 for 16-bit), except for
  label masks whose maximum is at most that half (0/1 masks, VisA-style class
  indices, or red-on-black RGB masks): there any value > 0 is anomalous.

Corrupt, truncated, missing and mismatched files raise `SPGError` naming the
file and the fix. Images above `MAX_IMAGE_PIXELS` (40 megapixels, or $SPG_MAX_IMAGE_PIXELS)
are refused before their pixels are decoded (a decompression bomb costs nothing);
`spg predict --max-pixels` overrides the limit per call. PIL's own bomb warning is
never shown: this limit replaces it. Nothing here decodes lazily: an image that loads here is
fully decoded.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from .errors import SPGError

# PIL modes that carry 16- or 32-bit integer samples (one channel).
_WIDE_INT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}

# The one pixel limit for every image the engine or the dashboard decodes (uploads included).
MAX_IMAGE_PIXELS = int(os.environ.get("SPG_MAX_IMAGE_PIXELS", 40_000_000))


def _open_decoded(path: str | os.PathLike, what: str, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode `path` (at most `max_pixels`, default MAX_IMAGE_PIXELS); any failure
    becomes an SPGError naming it."""
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    path = str(path)
    if not os.path.exists(path):
        raise SPGError(
            f"{what} not found", path=path, fix="check the path; if the dataset moved, re-open it from its new location"
        )
    if os.path.isdir(path):
        raise SPGError(
            f"{what} is a folder, not an image file", path=path, fix="point at an image file (.png, .jpg, .bmp, .tif)"
        )
    try:
        with warnings.catch_warnings():
            # Our limit below replaces PIL's bomb check (a warning, or an error above 2x its limit).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit
            w, h = img.size
            if w * h > max_pixels:
                raise SPGError(
                    f"{what} is {w} x {h} = {w * h / 1e6:.0f} megapixels, above the limit of "
                    f"{max_pixels / 1e6:.0f} megapixels",
                    path=path,
                    fix="downscale it, or raise the limit (`spg predict --max-pixels N`, or "
                    "SPG_MAX_IMAGE_PIXELS=N for every command)",
                )
            img.load()  # force the decode now so truncation is caught here, not in a worker
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SPGError(
            f"{what} is corrupt, truncated or not an image ({type(exc).__name__}: {exc})",
            path=path,
            fix="re-export or re-download this file, or delete it from the dataset",
        ) from None
    return img


def _wide_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16/32-bit integer or float array [H, W] onto uint8 [H, W] without clipping."""
    a = arr.astype(np.float64)
    if mode != "F" and a.size and a.min() >= 0 and a.max() <= 65535:
        scaled = a / 257.0  # 65535 / 257 = 255 exactly
    else:
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB following the module's rules."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _WIDE_INT_MODES or mode == "F":
        gray = _wide_to_uint8(np.asarray(img), mode)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        mode = "PA"  # palette transparency: treat like any alpha
    if mode in _ALPHA_MODES:
        # RGBA -> RGB in PIL drops alpha (no compositing), which is the rule we want.
        return img.convert("RGBA").convert("RGB")
    return img.convert("RGB")


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Load any supported image file as an 8-bit RGB PIL image (size = file's W x H), refusing
    images above `max_pixels` (default MAX_IMAGE_PIXELS)."""
    img = _open_decoded(path, "image", max_pixels)
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise SPGError(
            f"image has an unsupported pixel format {img.mode!r} ({exc})",
            path=str(path),
            fix="re-save it as 8-bit RGB or grayscale PNG/JPEG",
        ) from None


def _mask_array(img: Image.Image) -> np.ndarray:
    """Any mask image -> one integer channel [H, W] (int64), in its own value range."""
    if img.mode == "1":
        return np.asarray(img, dtype=np.int64) * 255
    if img.mode in _WIDE_INT_MODES or img.mode == "F":
        return np.asarray(img).astype(np.int64)
    if img.mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.int64)
    # P, RGB, RGBA, CMYK...: luminance. A red-on-black mask gives 76, caught by the >0 rule.
    return np.asarray(img.convert("L"), dtype=np.int64)


def binarize_mask(values: np.ndarray) -> np.ndarray:
    """Integer mask [H, W] -> bool [H, W] (see the module docstring for the rule)."""
    if values.size == 0:
        return values.astype(bool)
    top = int(values.max())
    half = 32767 if top > 255 else 127  # 16-bit container vs 8-bit
    return values > half if top > half else values > 0


def load_mask(
    path: str | os.PathLike, size: tuple[int, int], *, image_path: str | os.PathLike | None = None
) -> np.ndarray:
    """Load a ground-truth mask as bool [H, W]; `size` = (W, H) of its image.

    A mask whose size differs from `size` raises SPGError naming both files and
    their sizes (pass `image_path` so the message can name the image).
    """
    img = _open_decoded(path, "mask")
    if tuple(img.size) != tuple(size):
        image_part = f"image {image_path} is" if image_path is not None else "its image is"
        raise SPGError(
            f"mask is {img.size[0]}x{img.size[1]} but {image_part} {size[0]}x{size[1]} (W x H)",
            path=str(path),
            fix="masks must have exactly their image's size: re-export the mask at the image's "
            "size (nearest-neighbour resize), or check it belongs to this image",
        )
    return binarize_mask(_mask_array(img))


def mask_has_anomaly(path: str | os.PathLike) -> bool:
    """True when the mask file marks at least one pixel anomalous (decodes the mask)."""
    return bool(binarize_mask(_mask_array(_open_decoded(path, "mask"))).any())


# Every image is resized to the backbone's square input. Inspection images are near square (MVTec
# AD 1:1, VisA up to ~1.5:1); beyond 4:1 the stretch distorts shapes fourfold, and below 16 px a
# side there is next to nothing to enlarge: both still run, with a warning.
MAX_ASPECT = 4.0
MIN_SIDE = 16


def shape_note(size: tuple[int, int], side: int) -> str | None:
    """A warning for an image of `size` (w, h) resized to `side` x `side` when that stretches it beyond
    MAX_ASPECT or enlarges a side under MIN_SIDE px; None when the resize is ordinary."""
    w, h = size
    if max(w, h) > MAX_ASPECT * min(w, h):
        return f"{w} x {h} px (aspect {max(w, h) / min(w, h):.0f}:1) is stretched to a {side} x {side} square"
    if min(w, h) < MIN_SIDE:
        return f"{w} x {h} px is enlarged to a {side} x {side} square from under {MIN_SIDE} px a side"
    return None


def image_to_uint8(img: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """RGB image -> uint8 tensor [3, S, S], antialiased bicubic resize.

    The resize is PIL's (C, 8-bit, antialiased, as the HF image processors do), several
    times faster than a float resize in torch; uint8 also keeps what decoding workers
    hand to the main process 4x smaller than float32.
    """
    pil = to_rgb(img) if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))
    if pil.mode != "RGB":
        raise ValueError(f"image_to_tensor expects an RGB image, got mode {pil.mode}")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(pil, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def image_to_tensor(img: Image.Image | np.ndarray, size: int) -> torch.Tensor:
    """RGB image -> float32 tensor [3, S, S] in [0, 1] (see `image_to_uint8`)."""
    return image_to_uint8(img, size).float().div_(255.0)


def mask_to_tensor(mask: np.ndarray, size: int, mode: str = "nearest") -> torch.Tensor:
    """Bool/0-1 mask [H, W] -> float32 tensor [S, S] with values in {0, 1}.

    "nearest": 'nearest-exact' samples pixel centres like PIL's NEAREST (plain 'nearest' is
    shifted). "bilinear" (official protocol): bilinear (align_corners False), then > 0.5.
    """
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    if t.ndim != 2:
        raise ValueError(f"mask_to_tensor expects a mask [H, W], got shape {tuple(t.shape)}")
    if t.shape != (size, size):
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        t = F.interpolate(
            t[None, None], size=(size, size), mode="bilinear" if mode == "bilinear" else "nearest-exact", **kwargs
        )[0, 0]
    return (t > 0.5).float()
