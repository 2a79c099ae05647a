"""Top-activating auxiliary patches of every atom, in one streaming pass over a token store.

For each of the M atoms the index keeps the P patches with the largest SAE
activation s_j(f) over the whole auxiliary set, ordered by value (ties: the
earlier patch in store order first, so the index is deterministic). The pass
also accumulates the per-atom totals the statistics need (firing count,
activation mass, mass inside defect masks, mass per category).

Memory is bounded independently of the dataset size: the running state is
`[M, P]` (plus `[M, C]` totals), and each chunk of at most `chunk_tokens`
tokens is merged into it and dropped. A chunk is never densified to `[T, M]`
codes: its `T * k` non-zero (atom, value) pairs are sorted by atom and value,
the first P of each atom are kept, and the `[M, 2P]` union with the running list
is cut back to P.

Under torchrun each rank streams its own shards (shard i on rank i % world) and the
ranks' lists are merged (`merge_partials`): the P best of a union are among the P best
of each part, and ties go to the earlier token in both, so the merge is exactly the
single-process index.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import distributed
from ..atomic import load_tensors, save_tensors, write_json
from ..devices import resolve_device
from ..errors import SPGError
from ..sae import TopKSAE
from ..store import TokenStore

# Bytes allowed for one chunk's working set (see default_chunk_tokens): it sets the chunk size.
CHUNK_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}


@dataclass
class TokenChunk:
    """A run of consecutive images: tokens `[n, N, D]` (numpy or torch, any float dtype),
    the share of each patch inside the image's defect mask `[n, N]`, category ids `[n]`."""

    start_image: int
    tokens: np.ndarray | torch.Tensor
    mask_fraction: torch.Tensor | None = None
    category: torch.Tensor | None = None


@dataclass
class AtomCounts:
    """Per-atom totals over every streamed token (M atoms, C categories).

    fire_count `[M]` int64 (tokens with s_j > 0), act_sum `[M]` float64 (sum of s_j),
    masked_sum `[M]` float64 (sum of s_j times the patch's mask fraction), category_mass `[M, C]`
    float64 (sum of s_j per category), category_tokens `[C]` int64, num_tokens, mask_total
    (sum of mask fractions over all tokens: the auxiliary set's defect base rate times num_tokens).
    """

    TENSORS: ClassVar[tuple[str, ...]] = ("fire_count", "act_sum", "masked_sum", "category_mass", "category_tokens")

    fire_count: torch.Tensor
    act_sum: torch.Tensor
    masked_sum: torch.Tensor
    category_mass: torch.Tensor
    category_tokens: torch.Tensor
    num_tokens: int = 0
    mask_total: float = 0.0

    @classmethod
    def zeros(cls, width: int, num_categories: int, device: torch.device) -> AtomCounts:
        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            torch.zeros(width, dtype=torch.long, device=device),
            torch.zeros(width, **f64),
            torch.zeros(width, **f64),
            torch.zeros(width, num_categories, **f64),
            torch.zeros(num_categories, dtype=torch.long, device=device),
        )


@dataclass
class AtomIndex:
    """Top-P auxiliary patches per atom, best first; empty slots have value 0 and image/patch -1.

    values `[M, P]` float32 activations s_j, image `[M, P]` int64 store indices, patch `[M, P]` int64
    (row-major on the grid), mask_fraction `[M, P]` float32 (share of the patch inside its image's
    defect mask), counts: the streamed totals, meta: how and from what it was built.
    """

    values: torch.Tensor
    image: torch.Tensor
    patch: torch.Tensor
    mask_fraction: torch.Tensor
    counts: AtomCounts
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.values.shape[0])

    @property
    def top_p(self) -> int:
        return int(self.values.shape[1])

    def entries(self, atom: int) -> list[dict[str, Any]]:
        """The filled slots of one atom: [{"rank", "image", "patch", "value", "mask_fraction"}]."""
        keep = self.image[atom] >= 0
        return [
            {"rank": r, "image": int(i), "patch": int(p), "value": float(v), "mask_fraction": float(m)}
            for r, (i, p, v, m) in enumerate(
                zip(
                    self.image[atom][keep],
                    self.patch[atom][keep],
                    self.values[atom][keep],
                    self.mask_fraction[atom][keep],
                )
            )
        ]


class TopPAccumulator:
    """Running top-P (value, token) list per atom, `[M, P]`, merged chunk by chunk."""

    def __init__(self, width: int, top_p: int, device: torch.device):
        if top_p < 1:
            raise SPGError(f"top_p must be at least 1, got {top_p}")
        self.width, self.top_p, self.device = width, top_p, device
        self.values = torch.zeros(width, top_p, device=device)
        self.token = torch.full((width, top_p), -1, dtype=torch.long, device=device)
        self.extra = torch.zeros(width, top_p, device=device)

    def _chunk_top(
        self, values: torch.Tensor, atoms: torch.Tensor, token: torch.Tensor, extra: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Flat non-zero pairs `[L]` -> each atom's P best as `[M, P]` (value desc, token asc)."""
        by_value = torch.sort(values, descending=True, stable=True).indices
        by_atom = by_value[torch.sort(atoms[by_value], stable=True).indices]
        a = atoms[by_atom]
        per_atom = torch.bincount(a, minlength=self.width)
        rank = torch.arange(len(a), device=a.device) - (torch.cumsum(per_atom, 0) - per_atom)[a]
        keep = rank < self.top_p
        a, rank, pick = a[keep], rank[keep], by_atom[keep]
        vals = torch.zeros_like(self.values)
        tok = torch.full_like(self.token, -1)
        ext = torch.zeros_like(self.extra)
        vals[a, rank], tok[a, rank], ext[a, rank] = values[pick], token[pick], extra[pick]
        return vals, tok, ext

    def update(self, values: torch.Tensor, atoms: torch.Tensor, token: torch.Tensor, extra: torch.Tensor) -> None:
        """Merge a chunk's sparse codes: values/atoms `[T, k]`, global token ids `[T]`, extra `[T]`.

        Tokens must arrive in increasing id order across calls (ties then favour the running list).
        """
        k = values.shape[1]
        flat_v = values.reshape(-1).float()
        flat_a = atoms.reshape(-1)
        # Only a value above the atom's current P-th (0 while the list is not full, so ReLU'd zeros
        # never enter) can make the list; an equal one loses the tie to the earlier token. After
        # the first chunks this drops almost every candidate before the sorts.
        pos = (flat_v > self.values[:, -1].index_select(0, flat_a)).nonzero().flatten()
        if len(pos) == 0:
            return
        owner = pos // k
        chunk = self._chunk_top(flat_v[pos], flat_a[pos], token[owner], extra[owner].float())
        merged_v = torch.cat([self.values, chunk[0]], dim=1)
        order = torch.sort(merged_v, dim=1, descending=True, stable=True).indices[:, : self.top_p]
        self.values = merged_v.gather(1, order)
        self.token = torch.cat([self.token, chunk[1]], dim=1).gather(1, order)
        self.extra = torch.cat([self.extra, chunk[2]], dim=1).gather(1, order)


def patch_mask_fraction(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Pixel masks `[B, S, S]` in {0, 1} -> share of each patch inside the mask `[B, N]` (area pooling)."""
    pooled = F.adaptive_avg_pool2d(masks[:, None].float(), grid)
    return pooled.reshape(masks.shape[0], -1)


def store_chunks(
    store: TokenStore, chunk_tokens: int, *, with_masks: bool = True, shards: list[int] | None = None
) -> Iterator[TokenChunk]:
    """Chunks of whole images (at most `chunk_tokens` tokens, at least one image) in store order,
    of every shard or of the listed shard positions only. Chunks never cross a shard, so a
    shard is cut the same way whichever process reads it."""
    per_chunk = max(1, chunk_tokens // store.num_patches)
    names = store.categories
    cat_ids = torch.tensor([names.index(r["category"]) for r in store.images], dtype=torch.long)
    wanted = None if shards is None else set(shards)
    for position, (start, shard) in enumerate(store.iter_shards()):
        if wanted is not None and position not in wanted:
            continue
        for lo in range(0, shard.shape[0], per_chunk):
            hi = min(lo + per_chunk, shard.shape[0])
            idx = range(start + lo, start + hi)
            frac = patch_mask_fraction(store.masks(idx), store.grid) if with_masks else None
            yield TokenChunk(start + lo, shard[lo:hi], frac, cat_ids[start + lo : start + hi])


def default_chunk_tokens(sae: TopKSAE, device: torch.device) -> int:
    """Tokens per chunk so one chunk's working set fits the device's budget.

    Per token: float32 tokens (D), encoder pre-activations (M, twice: the matmul's output and
    the bias sum), plus ~48 bytes per code entry (k) for the candidates' filtering and sorts.
    """
    per_token = 4 * (sae.dim + 2 * sae.width) + 48 * sae.k
    return max(1, CHUNK_BYTES["cuda" if device.type == "cuda" else "cpu"] // per_token)


@torch.no_grad()
def stream_top_p(
    chunks: Iterable[TokenChunk],
    sae: TopKSAE,
    *,
    top_p: int,
    num_patches: int,
    num_categories: int = 1,
    device: torch.device | str = "cpu",
    progress: tqdm | None = None,
) -> tuple[TopPAccumulator, AtomCounts]:
    """One pass over `chunks` (in image order): the running top-P list and the per-atom totals.

    The SAE is used on `device` (moved there if needed); chunks are copied there one at a time.
    A chunk without masks counts as mask-free; one without categories counts as category 0.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if next(sae.parameters()).device != device:
        sae = _moved(sae, device)
    acc = TopPAccumulator(sae.width, top_p, device)
    counts = AtomCounts.zeros(sae.width, num_categories, device)
    for chunk in chunks:
        # np.array copies the (read-only, memory-mapped) chunk into RAM: one chunk at a time.
        tokens = chunk.tokens if torch.is_tensor(chunk.tokens) else torch.from_numpy(np.array(chunk.tokens))
        n = tokens.shape[0]
        t = n * num_patches
        x = tokens.to(device, non_blocking=True).reshape(t, -1).float()
        frac = (
            chunk.mask_fraction.to(device).reshape(t).float()
            if chunk.mask_fraction is not None
            else torch.zeros(t, device=device)
        )
        cats = (
            chunk.category.to(device) if chunk.category is not None else torch.zeros(n, dtype=torch.long, device=device)
        ).repeat_interleave(num_patches)
        code = sae.encode(x)
        first = chunk.start_image * num_patches
        acc.update(code.values, code.indices, torch.arange(first, first + t, device=device), frac)
        _accumulate(counts, code.values, code.indices, frac, cats)
        if progress is not None:
            progress.update(t)
    return acc, counts


def _moved(sae: TopKSAE, device: torch.device) -> TopKSAE:
    """A copy of `sae` on `device` (the caller's model stays where it was)."""
    copy = TopKSAE(sae.dim, sae.width, sae.k)
    copy.load_state_dict(sae.state_dict())
    return copy.to(device)


def _accumulate(
    counts: AtomCounts, values: torch.Tensor, atoms: torch.Tensor, frac: torch.Tensor, cats: torch.Tensor
) -> None:
    """Add one chunk's codes (`[T, k]`), mask fractions `[T]` and category ids `[T]` to the totals."""
    k = values.shape[1]
    v = values.reshape(-1).double()
    a = atoms.reshape(-1)
    counts.fire_count.index_add_(0, a, (v > 0).long())
    counts.act_sum.index_add_(0, a, v)
    counts.masked_sum.index_add_(0, a, v * frac.double().repeat_interleave(k))
    num_cats = counts.category_tokens.shape[0]
    flat_mass = counts.category_mass.view(-1)
    flat_mass.index_add_(0, a * num_cats + cats.repeat_interleave(k), v)
    counts.category_tokens += torch.bincount(cats, minlength=num_cats)
    counts.num_tokens += int(values.shape[0])
    counts.mask_total += float(frac.double().sum())


def build_atom_index(
    store: TokenStore,
    sae: TopKSAE,
    *,
    top_p: int = 16,
    device: str | torch.device = "auto",
    chunk_tokens: int | None = None,
    progress: bool = False,
) -> AtomIndex:
    """The top-P index and per-atom totals of `sae` over every token of the auxiliary `store`."""
    if store.dim != sae.dim:
        raise SPGError(
            f"the SAE expects {sae.dim}-dim tokens but the store holds {store.dim}-dim tokens",
            path=str(store.root),
            fix="use the auxiliary store the run was trained on",
        )
    dev = resolve_device(device)
    chunk_tokens = chunk_tokens or default_chunk_tokens(sae, dev)
    total = store.num_images * store.num_patches
    t0 = time.perf_counter()
    mine = distributed.owned(len(store.manifest["shards"]))
    with tqdm(total=total, desc="atom index", unit="tok", unit_scale=True, disable=not progress) as bar:
        acc, counts = stream_top_p(
            store_chunks(store, chunk_tokens, shards=mine),
            sae,
            top_p=top_p,
            num_patches=store.num_patches,
            num_categories=len(store.categories),
            device=dev,
            progress=bar,
        )
    if distributed.world_size() > 1:
        acc, counts = merge_partials(_gathered(acc, counts))
    meta = {
        "world_size": distributed.world_size(),
        "top_p": top_p,
        "width": sae.width,
        "grid": list(store.grid),
        "image_size": store.image_size,
        "num_images": store.num_images,
        "num_patches": store.num_patches,
        "categories": store.categories,
        "aux_store": str(store.root),
        "device": str(dev),
        "chunk_tokens": chunk_tokens,
        "seconds": time.perf_counter() - t0,
    }
    return finish_index(acc, counts, store.num_patches, meta)


def merge_partials(parts: list[tuple[TopPAccumulator, AtomCounts]]) -> tuple[TopPAccumulator, AtomCounts]:
    """One top-P list and one set of totals from the lists and totals of disjoint token sets.

    Exact: the union `[M, R*P]` is ordered by token id, then stably by value (descending), so
    equal values keep the earlier token first, as the streaming pass does; empty slots (value 0)
    sort after every filled one.
    """
    first = parts[0][0]
    acc = TopPAccumulator(first.width, first.top_p, first.device)
    values = torch.cat([a.values for a, _ in parts], dim=1)
    token = torch.cat([a.token for a, _ in parts], dim=1)
    extra = torch.cat([a.extra for a, _ in parts], dim=1)
    by_token = torch.sort(torch.where(token < 0, torch.iinfo(torch.long).max, token), dim=1, stable=True).indices
    by_value = torch.sort(values.gather(1, by_token), dim=1, descending=True, stable=True).indices
    order = by_token.gather(1, by_value)[:, : acc.top_p]
    acc.values, acc.token, acc.extra = values.gather(1, order), token.gather(1, order), extra.gather(1, order)
    totals = [c for _, c in parts]
    counts = AtomCounts(
        *(sum(getattr(c, n) for c in totals) for n in AtomCounts.TENSORS),
        num_tokens=sum(c.num_tokens for c in totals),
        mask_total=sum(c.mask_total for c in totals),
    )
    return acc, counts


def _gathered(acc: TopPAccumulator, counts: AtomCounts) -> list[tuple[TopPAccumulator, AtomCounts]]:
    """Every rank's (list, totals), in rank order, on every rank."""
    lists = [distributed.all_gather(t) for t in (acc.values, acc.token, acc.extra)]
    tensors = [distributed.all_gather(getattr(counts, n)) for n in AtomCounts.TENSORS]
    scalars = distributed.all_gather(
        torch.tensor([counts.num_tokens, counts.mask_total], dtype=torch.float64, device=acc.values.device)
    )
    parts = []
    for r in range(distributed.world_size()):
        part = TopPAccumulator(acc.width, acc.top_p, acc.device)
        part.values, part.token, part.extra = lists[0][r], lists[1][r], lists[2][r]
        parts.append(
            (part, AtomCounts(*(t[r] for t in tensors), num_tokens=int(scalars[r][0]), mask_total=float(scalars[r][1])))
        )
    return parts


def finish_index(acc: TopPAccumulator, counts: AtomCounts, num_patches: int, meta: dict[str, Any]) -> AtomIndex:
    """Split global token ids into (image, patch) and move everything to the CPU."""
    token = acc.token.cpu()
    filled = token >= 0
    image = torch.where(filled, token // num_patches, -1)
    patch = torch.where(filled, token % num_patches, -1)
    cpu_counts = AtomCounts(
        *(getattr(counts, n).cpu() for n in AtomCounts.TENSORS),
        num_tokens=counts.num_tokens,
        mask_total=counts.mask_total,
    )
    return AtomIndex(acc.values.cpu(), image, patch, acc.extra.cpu(), cpu_counts, meta)


# -- persistence -------------------------------------------------------------------------------


def save_index(index: AtomIndex, path: str | Path) -> None:
    """`path` (.safetensors) with every tensor, and a readable summary beside it (.json)."""
    path = Path(path)
    tensors = {
        "values": index.values,
        "image": index.image,
        "patch": index.patch,
        "mask_fraction": index.mask_fraction,
        **{f"counts.{n}": getattr(index.counts, n) for n in AtomCounts.TENSORS},
    }
    meta = {**index.meta, "num_tokens": index.counts.num_tokens, "mask_total": index.counts.mask_total}
    save_tensors(path, tensors, {"index": meta})
    write_json(path.with_suffix(".json"), {**meta, "tensors": {k: list(v.shape) for k, v in tensors.items()}})


def load_index(path: str | Path) -> AtomIndex:
    """Read an index written by `save_index`; SPGError when it is missing, damaged or inconsistent."""
    fix = "rebuild it with `spg atoms --run DIR`"
    path = Path(path)
    if not path.is_file():
        raise SPGError("atom index not found", path=str(path), fix=fix)
    try:
        tensors, meta = load_tensors(path, what="atom index")
    except SPGError as exc:
        raise SPGError(str(exc).split("\n")[0], path=str(path), fix=fix) from None
    info = meta.get("index")
    needed = {"values", "image", "patch", "mask_fraction", *(f"counts.{n}" for n in AtomCounts.TENSORS)}
    if not isinstance(info, dict) or needed - tensors.keys():
        raise SPGError("atom index lacks tensors or metadata", path=str(path), fix=fix)
    shape = tensors["values"].shape
    if any(tensors[n].shape != shape for n in ("image", "patch", "mask_fraction")):
        raise SPGError("atom index tensors disagree in shape", path=str(path), fix=fix)
    counts = AtomCounts(
        *(tensors[f"counts.{n}"] for n in AtomCounts.TENSORS),
        num_tokens=int(info["num_tokens"]),
        mask_total=float(info["mask_total"]),
    )
    return AtomIndex(
        tensors["values"],
        tensors["image"],
        tensors["patch"],
        tensors["mask_fraction"],
        counts,
        {k: v for k, v in info.items() if k not in ("num_tokens", "mask_total")},
    )
