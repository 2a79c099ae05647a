"""A deterministic synthetic anomaly dataset in MVTec layout (no download needed).

Eight categories, half textures and half objects, each rendered procedurally
with per-image variation (pose, texture phase, colour jitter, lighting
gradient, focus blur, sensor noise), so a normal image never equals a template:

    textures: weave (woven threads), granite (speckled stone), brushed
              (directional metal streaks), tiles (ceramic grid)
    objects:  disc (printed disc), nut (hexagon with threaded hole),
              pill (two-tone capsule), plug (body with two pins)

Six defect kinds, each with a pixel mask (0/255, the image's size):

    scratch        thin curved line, lighter or darker than the surface
    hole           dark irregular pit with a raised rim
    stain          low-contrast tinted blob with a soft edge
    crack          branching thin dark random walk
    contamination  foreign-coloured particle patch or a tuft of fibres
    missing        material gone: a chunk (or a whole part, e.g. a plug pin)
                   shows the background/substrate underneath

Scale, contrast (subtle to strong), shape and position are random, drawn
log-uniformly so small defects are as common as large ones; object defects lie
on the object. Measured on the default set (seed 0): mask area 0.01 % to 5.5 %
of the image (median 0.24 %), mask extent 5 to 103 px of 256 (median 27 px).
Nothing here was tuned to make a downstream number come out any way.

Two disjoint groups, both with textures and objects and every defect kind, so
aux -> target transfer is possible while target categories stay unseen:
`synthetic-a` and `synthetic-b` (see SYNTHETIC_GROUPS); `synthetic` is all.

Same seed, same bytes: every image draws from its own RNG keyed by
(seed, category, split, defect, index), independent of generation order. The seed is
part of the dataset spec: `synthetic-a@seed=1` (default 0).

Modules: `draw` (drawing helpers), `scenes` (normal scenes), `defects` (defect
renderers), `render` (one image), `cache` (the set on disk).
"""

from __future__ import annotations

from .cache import (
    ALL_GROUP,
    GENERATOR_VERSION,
    MARKER,
    SYNTHETIC_GROUPS,
    cache_subdir,
    generate_synthetic,
    open_synthetic,
    parse_synthetic_spec,
    synthetic_root,
)
from .compose import IMAGE_SIZE, render_image
from .defects import DEFECT_KINDS, DEFECTS
from .scenes import CATEGORIES, OBJECTS, RENDERERS, TEXTURES, Scene

__all__ = [
    "ALL_GROUP",
    "CATEGORIES",
    "DEFECTS",
    "DEFECT_KINDS",
    "GENERATOR_VERSION",
    "IMAGE_SIZE",
    "MARKER",
    "OBJECTS",
    "RENDERERS",
    "SYNTHETIC_GROUPS",
    "TEXTURES",
    "Scene",
    "cache_subdir",
    "generate_synthetic",
    "open_synthetic",
    "parse_synthetic_spec",
    "render_image",
    "synthetic_root",
]
