"""Token stores: frozen-backbone patch tokens on disk, extracted once and shared by many runs.

One store per (dataset, split, backbone identity, resolution, layer). Layout (docs/STORE.md
is the normative description):

    STORE/manifest.json              identity, grid, dtype, per-image records, shard list
    STORE/shard_00000.safetensors    tokens [n, N, D] fp16 + masks [n, ceil(S*S/8)] uint8 (bit-packed, S x S);
                                     + cls [n, D] fp16 when the backbone has a CLS token (version 2);
                                     its metadata `shard` records the image positions it covers
    STORE/skipped.json               images skipped with --skip-bad, and why

layout.py holds the format's shared rules (key, folder, shard plan and records, mask packing),
reader.py the reader (`TokenStore`), extraction.py the writer (`build_store`).
"""

from .extraction import build_store
from .layout import STORE_VERSION, pack_masks, store_dir_for, store_key
from .reader import TokenStore

__all__ = ["STORE_VERSION", "TokenStore", "build_store", "pack_masks", "store_dir_for", "store_key"]
