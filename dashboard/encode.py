"""PNG encoding for the pages, written once: st.image re-encodes a PIL image on every rerun, bytes it passes on."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png_bytes(image: Image.Image) -> bytes:
    """`image` as PNG file bytes, compressed fast: zlib level 1 encodes a tile about 5x faster than the
    default 6 for files about a third larger, and the pictures go to a browser on the same network."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def png_data_uri(image: Image.Image) -> str:
    """`image` as a `data:image/png;base64,...` URI (a plotly layout image)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
