"""Atom x defect-kind map: how much of each guide atom's activation falls inside each auxiliary
defect kind (category x defect type), from the auxiliary masks.

For guide atom j and kind k (the auxiliary images of one category with one defect type):

    mean[j, k] = sum over in-mask patches of kind-k images of s_j  /  number of those patches

A class-general atom fires inside defects of many categories (its row spans columns); a
class-specific one stays in one category's columns. `categories_spanned` counts them. The
table is cached in RUN/atoms/kinds.safetensors + kinds.json (keyed by the SAE's hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import file_sha256, load_tensors, read_json, save_tensors, write_json
from ..errors import SPGError
from ..runs import SAE_FILE as SAE
from ..sae import TopKSAE
from .region import mask_patches

KINDS_TENSORS = "atoms/kinds.safetensors"
KINDS_JSON = "atoms/kinds.json"
VERSION = 1
SPAN_SHARE = 0.25  # a category counts as spanned when its best kind reaches 25% of the row's peak


@dataclass
class KindMap:
    """atoms `[A]`, kinds (category, defect) `[K]`, mean in-mask activation `[A, K]`, in-mask patches `[K]`."""

    atoms: np.ndarray
    kinds: list[tuple[str, str]]
    mean: np.ndarray
    patches: np.ndarray

    def categories_spanned(self, share: float = SPAN_SHARE) -> np.ndarray:
        """`[A]` how many categories hold a kind where the atom reaches `share` of its row's peak."""
        cats = sorted({c for c, _ in self.kinds})
        peak = self.mean.max(axis=1, keepdims=True)
        hit = (self.mean >= share * np.maximum(peak, 1e-12)) & (peak > 0)
        out = np.zeros(len(self.atoms), dtype=np.int64)
        for c in cats:
            cols = [i for i, (cat, _) in enumerate(self.kinds) if cat == c]
            out += hit[:, cols].any(axis=1)
        return out


def defect_kinds(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The (category, defect) pairs of the anomalous auxiliary images, sorted."""
    return sorted({(r["category"], r["defect"]) for r in records if r["label"]})


@torch.no_grad()
def kind_map(sae: TopKSAE, store: Any, atoms: list[int], batch: int = 16) -> KindMap:
    """Mean activation of `atoms` inside each defect kind's masks, over the auxiliary store."""
    if not atoms:
        raise SPGError("no guide atoms to map", fix="interpret a run whose guides have active atoms")
    records = store.images
    kinds = defect_kinds(records)
    if not kinds:
        raise SPGError(
            "the auxiliary set has no anomalous images with masks",
            path=str(getattr(store, "root", "")),
            fix="use an auxiliary set with defect masks",
        )
    column = {k: i for i, k in enumerate(kinds)}
    ids = torch.as_tensor(atoms, dtype=torch.long)
    mass = np.zeros((len(atoms), len(kinds)), dtype=np.float64)
    patches = np.zeros(len(kinds), dtype=np.int64)
    anomalous = [i for i, r in enumerate(records) if r["label"]]
    device = next(sae.parameters()).device
    for start in range(0, len(anomalous), batch):
        idx = anomalous[start : start + batch]
        tokens = store.tokens(idx)
        masks = store.masks(idx).numpy() > 0.5
        for row, i in enumerate(idx):
            inside = torch.as_tensor(mask_patches(masks[row], store.grid))
            if not inside.any():
                continue
            codes = sae.encode_dense(tokens[row][inside].to(device).float()).cpu()[:, ids]  # [n_in, A]
            k = column[(records[i]["category"], records[i]["defect"])]
            mass[:, k] += codes.sum(0).double().numpy()
            patches[k] += int(inside.sum())
    mean = mass / np.maximum(patches, 1)[None, :]
    return KindMap(np.asarray(atoms, dtype=np.int64), kinds, mean.astype(np.float32), patches)


@torch.no_grad()
def kind_patches(sae: TopKSAE, store: Any, atom: int, kind: tuple[str, str], count: int = 8) -> list[dict[str, Any]]:
    """The atom's `count` strongest in-mask patches among the images of one defect kind:
    [{"image", "patch", "value"}], largest first (what a heatmap cell is made of)."""
    records = store.images
    idx = [i for i, r in enumerate(records) if r["label"] and (r["category"], r["defect"]) == tuple(kind)]
    found: list[dict[str, Any]] = []
    device = next(sae.parameters()).device
    for i in idx:
        inside = mask_patches(store.masks([i])[0].numpy() > 0.5, store.grid)
        code = sae.encode(store.tokens([i])[0].to(device).float())
        act = (code.values * (code.indices == atom)).sum(-1).cpu().numpy()
        for p in np.flatnonzero(inside & (act > 0)):
            found.append({"image": i, "patch": int(p), "value": float(act[p])})
    found.sort(key=lambda e: -e["value"])
    return found[:count]


def save_kind_map(run_dir: str | Path, km: KindMap, sae_sha: str) -> None:
    """RUN/atoms/kinds.safetensors (tensors) + kinds.json (kinds, SAE hash), each written atomically."""
    run_dir = Path(run_dir)
    save_tensors(
        run_dir / KINDS_TENSORS,
        {"atoms": torch.as_tensor(km.atoms), "mean": torch.as_tensor(km.mean), "patches": torch.as_tensor(km.patches)},
    )
    write_json(run_dir / KINDS_JSON, {"version": VERSION, "kinds": [list(k) for k in km.kinds], "sae_sha256": sae_sha})


def load_kind_map(run_dir: str | Path, sae_sha: str) -> KindMap | None:
    """The cached map, or None when missing, of another version or built for another SAE."""
    run_dir = Path(run_dir)
    if not (run_dir / KINDS_JSON).is_file() or not (run_dir / KINDS_TENSORS).is_file():
        return None
    meta = read_json(run_dir / KINDS_JSON, what="atom x defect-kind map")
    if meta.get("version") != VERSION or meta.get("sae_sha256") != sae_sha:
        return None
    t, _ = load_tensors(run_dir / KINDS_TENSORS, what="atom x defect-kind map")
    return KindMap(t["atoms"].numpy(), [tuple(k) for k in meta["kinds"]], t["mean"].numpy(), t["patches"].numpy())


def run_kind_map(run_dir: str | Path, sae: TopKSAE, store: Any, atoms: list[int]) -> KindMap:
    """The run's cached map when it is current and covers `atoms`, else computed and cached."""
    sha = file_sha256(Path(run_dir) / SAE)
    km = load_kind_map(run_dir, sha)
    if km is not None and set(atoms) <= set(km.atoms.tolist()):
        keep = np.isin(km.atoms, atoms)
        return KindMap(km.atoms[keep], km.kinds, km.mean[keep], km.patches)
    km = kind_map(sae, store, atoms)
    save_kind_map(run_dir, km, sha)
    return km
