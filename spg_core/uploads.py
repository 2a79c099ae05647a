"""Validating an uploaded image file before anything decodes its pixels.

Upload limits: a 25 MB file or a 40-megapixel image is far beyond any inspection image the
backbones see (they resize to <= 518 px), and decoding more would let one upload stall the server.
The launcher passes MAX_UPLOAD_BYTES to Streamlit; `decode_upload` enforces all of them.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .atomic import check_regular_file
from .errors import SPGError
from .images import MAX_IMAGE_PIXELS, to_rgb
from .limits import MAX_UPLOAD_BYTES

UPLOAD_TYPES = ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp")
MAX_UPLOAD_PIXELS = MAX_IMAGE_PIXELS  # the engine's one pixel limit (images.py)


def decode_upload(
    name: str, data: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS
) -> Image.Image:
    """Validate an uploaded file and decode it to 8-bit RGB, or raise SPGError saying why not.

    Checks, in order: extension, byte size, that it decodes as an image at all, pixel count
    (before decoding the pixels, so a decompression bomb is refused cheaply), full decode.
    """
    ext = Path(name).suffix.lower().lstrip(".")
    if ext not in UPLOAD_TYPES:
        raise SPGError(
            f"{name}: .{ext or '?'} files are not accepted",
            fix=f"upload an image: {', '.join('.' + t for t in UPLOAD_TYPES)}",
        )
    if len(data) == 0:
        raise SPGError(f"{name} is empty", fix="upload the image file again")
    if len(data) > max_bytes:
        raise SPGError(
            f"{name} is {len(data) / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB limit",
            fix="downscale or re-compress the image",
        )
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
            if w * h > max_pixels:
                raise SPGError(
                    f"{name} is {w} x {h} pixels, more than {max_pixels / 1e6:.0f} megapixels",
                    fix="downscale the image",
                )
            probe.load()
            return to_rgb(probe).copy()
    except SPGError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise SPGError(
            f"{name} is corrupt, truncated or not an image ({type(exc).__name__})",
            fix="re-export the image as PNG or JPEG",
        ) from None


def read_image_file(path: str | Path, *, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of an image file named by a run (e.g. a scores.csv entry), read only after checking
    that it is a regular file within the upload limit (so /dev/zero is refused, not read forever)."""
    check_regular_file(path, max_bytes, what="image file")
    with open(path, "rb") as fh:
        return fh.read(max_bytes + 1)
