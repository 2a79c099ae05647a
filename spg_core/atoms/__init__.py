"""Atom interpretation: what the guides are made of, per image, per atom, and what-if ablations.

ranking.py   rank_atoms, attribute (exact per-atom split of l_a and l_n), top atoms per patch/image
index.py     top-P auxiliary patches per atom in one bounded-memory streaming pass (AtomIndex)
stats.py     per-atom statistics and the class-general / class-specific tag (TAG_RULE)
visual.py    activation heatmaps, patch crops, the gallery layout
ablation.py  Ablator: remove, rescale (steer) or drop atoms, recompute target maps and metrics from cached tokens
summaries.py per-atom summaries built with the index (histograms, samples, neighbours)
flags.py     artefact flags (border, fixed-position, blank), the dense label, and their rule
texture.py   per-patch pixel std of the auxiliary images (the blank flag)
build.py     the RUN/atoms/ artifacts: build_atoms, load_atoms, write_gallery
"""

from .ablation import AblationResult, Ablator
from .build import build_atoms, load_atoms, write_gallery
from .index import (
    AtomCounts,
    AtomIndex,
    TokenChunk,
    TopPAccumulator,
    build_atom_index,
    load_index,
    save_index,
    stream_top_p,
)
from .ranking import Attribution, attribute, rank_atoms, top_atoms_per_image, top_atoms_per_patch
from .stats import TAG_RULE, atom_stats, tag_atoms
from .visual import atom_activation, atom_heatmap, heatmap_overlay, patch_box, patch_crop

__all__ = [
    "TAG_RULE",
    "AblationResult",
    "Ablator",
    "AtomCounts",
    "AtomIndex",
    "Attribution",
    "TokenChunk",
    "TopPAccumulator",
    "atom_activation",
    "atom_heatmap",
    "atom_stats",
    "attribute",
    "build_atom_index",
    "build_atoms",
    "heatmap_overlay",
    "load_atoms",
    "load_index",
    "patch_box",
    "patch_crop",
    "rank_atoms",
    "save_index",
    "stream_top_p",
    "tag_atoms",
    "top_atoms_per_image",
    "top_atoms_per_patch",
    "write_gallery",
]
