"""Where SAE training reads its tokens: all of them in memory, or streamed from the store's shards.

Both sources give the training loop the same three things: each epoch's batches (this rank's
slice of each global batch, with the global batch's row count), sequential chunks for the
passes that accumulate statistics (FVU, dead atoms), and the state of their shuffling (saved
in checkpoints, so a resumed run draws the same batches).

Batch orders:

    ResidentTokens, order "studio"    tokens shuffled one by one (randperm over T, seeded)
    ResidentTokens, order "official"  whole images in the official code's seeded image order
                                      (official_order.epoch_order), 16 images' tokens a step
    StreamedTokens                    shards in a seeded order, a window of `window_shards`
                                      shards shuffled at token level (token_stream.ShardStream);
                                      the order depends on (seed, epoch) alone

The streamed order therefore differs from both resident orders: tokens from shards far apart
in the store meet in a batch only through the window's carry-over. docs/SCALING.md gives the
measured effect on the loss curve.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch

from . import distributed
from .config import SAEConfig
from .errors import SPGError
from .memory import format_size, resident_sae_bytes, streamed_sae_bytes
from .official_order import epoch_order, image_token_rows, sae_init
from .store import TokenStore
from .token_stream import ShardStream, ordered_batches

Batches = Iterator[tuple[torch.Tensor, int]]  # (this rank's rows [b, D] float32, the global batch's rows)


class ResidentTokens:
    """Every token `[T, D]` (image-major: row i * N + p is patch p of image i) in host or device memory."""

    def __init__(
        self, tokens: torch.Tensor, tokens_per_image: int, batch_rows: int, *, order: str, seed: int, width: int
    ):
        self.tokens, self.tokens_per_image, self.batch_rows = tokens, tokens_per_image, batch_rows
        self.num_tokens, self.dim = tokens.shape
        self.seed = seed
        self.pass_rows = 65536  # tokens per chunk of the statistics' passes (FVU, dead atoms, bias centre)
        self.gen = torch.Generator(device=tokens.device).manual_seed(seed)
        # official: the generator positioned after the official SAE's (width M) construction draws
        self.official_gen = sae_init(seed, self.dim, width)[1] if order == "official" else None

    def epoch(self, epoch: int, device: torch.device) -> Batches:
        if self.official_gen is not None:
            images = epoch_order(self.official_gen, self.num_tokens // self.tokens_per_image)
            order = image_token_rows(images, self.tokens_per_image).to(self.tokens.device)
        else:
            order = torch.randperm(self.num_tokens, generator=self.gen, device=self.tokens.device)
        return ordered_batches(self.tokens, order, self.batch_rows, device)

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """This rank's share of the tokens, `[<= rows, D]` at a time (their sums are all-reduced)."""
        mine = self.tokens[distributed.batch_slice(self.num_tokens)]
        return (mine[i : i + rows] for i in range(0, mine.shape[0], rows))

    def all_chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """Every token, `[<= rows, D]` at a time (for a statistic each rank computes whole)."""
        return (self.tokens[i : i + rows] for i in range(0, self.num_tokens, rows))

    def sample(self, n: int) -> torch.Tensor:
        """`[<= n, D]` tokens drawn without replacement (seeded): the decoder bias's initial centre."""
        pick = torch.randperm(self.num_tokens, generator=torch.Generator().manual_seed(self.seed))[:n]
        return self.tokens[pick.to(self.tokens.device)]

    def state(self) -> dict[str, torch.Tensor]:
        out = {"rng_tokens": self.gen.get_state()}
        if self.official_gen is not None:
            out["rng_official"] = self.official_gen.get_state()
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.gen.set_state(state["rng_tokens"])
        if self.official_gen is not None:
            self.official_gen.set_state(state["rng_official"])


class StreamedTokens:
    """The store's tokens read from its shards as training goes: host memory holds one shuffled
    window and a few batches (memory.streamed_sae_bytes), not the store."""

    def __init__(self, store: TokenStore, batch_rows: int, *, seed: int, window_shards: int, prefetch: int = 4) -> None:
        every = list(range(len(store.manifest["shards"])))
        # Every rank reads every shard and computes its slice of each global batch, so the ranks
        # step together and each step equals the single-process step (as in sae_train).
        self.stream = ShardStream(store, batch_rows, seed=seed, window_shards=window_shards, shards=every, prefetch=1)
        self.prefetch, self.batch_rows, self.seed = prefetch, batch_rows, seed
        self.store, self.dim = store, store.dim
        self.pass_rows = batch_rows  # chunks of the statistics' passes: a batch, which the budget holds
        self.num_tokens = self.stream.num_tokens
        self.owned = ShardStream(store, batch_rows, shards=distributed.owned(len(every)))

    def epoch(self, epoch: int, device: torch.device) -> Batches:
        self.stream.device, self.stream.prefetch = device, self.prefetch
        for batch in self.stream.epoch(epoch):
            yield batch[distributed.batch_slice(len(batch))], len(batch)

    def chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """This rank's shards' tokens in store order, `[<= rows, D]` at a time."""
        return self.owned.chunks(rows)

    def all_chunks(self, rows: int) -> Iterator[torch.Tensor]:
        """Every token of the store in store order, `[<= rows, D]` at a time."""
        return self.stream.chunks(rows)

    def sample(self, n: int) -> torch.Tensor:
        """`[<= n, D]` tokens spread evenly over the store (every s-th row), read in one pass."""
        step = max(1, self.num_tokens // n)
        picked, seen = [], 0
        for chunk in self.stream.chunks(self.pass_rows):
            first = (-seen) % step
            picked.append(chunk[first::step].clone())
            seen += len(chunk)
        return torch.cat(picked)[:n]

    def state(self) -> dict[str, torch.Tensor]:
        return {}  # the order is a function of (seed, epoch)

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        return None


def sae_token_source(
    store: TokenStore, cfg: SAEConfig, budget: int, stream: str
) -> tuple[ResidentTokens | StreamedTokens, dict[str, Any]]:
    """The SAE's tokens, in memory or streamed, under `budget` host bytes; and a record of the choice.

    Refused (SPGError) when streaming cannot fit one batch and one shard in the budget."""
    batch_rows = cfg.batch_images * store.num_patches
    itemsize = store_itemsize(store)
    n_tokens = store.num_images * store.num_patches
    need = resident_sae_bytes(n_tokens, batch_rows, store.dim, cfg.width, cfg.k, itemsize)
    # A select fold views some images of a store: its shards hold other images too, so it is not streamed.
    in_memory = stream == "never" or (stream == "auto" and need <= budget) or hasattr(store, "indices")
    if in_memory:
        tokens = store.all_tokens(device="cpu", dtype=torch.float32 if itemsize == 4 else torch.float16)
        source = ResidentTokens(tokens, store.num_patches, batch_rows, order=cfg.order, seed=cfg.seed, width=cfg.width)
        return source, {"streamed": False, "order": cfg.order, "host_bytes": need, "budget": budget}
    rows = sorted((s["count"] * store.num_patches for s in store.manifest["shards"]), reverse=True)
    fits = [
        w
        for w in range(1, cfg.stream_window_shards + 1)
        if streamed_sae_bytes(sum(rows[:w]) + batch_rows, batch_rows, store.dim, cfg.width, cfg.k, itemsize, 4)
        <= budget
    ]
    if not fits:
        smallest = streamed_sae_bytes(rows[0] + batch_rows, batch_rows, store.dim, cfg.width, cfg.k, itemsize, 4)
        raise SPGError(
            f"--max-host-memory {format_size(budget)} cannot hold streamed SAE training's smallest working set "
            f"(one shard of {rows[0]:,} tokens, 4 batches of {batch_rows:,} tokens, the step and the SAE)",
            path=str(store.root),
            fix=f"give --max-host-memory {format_size(smallest)} or more (or fewer --sae-batch-images / --width)",
        )
    window = fits[-1]
    if cfg.order == "official":
        print("note: streamed SAE training draws the stream's order, not the official image order", file=sys.stderr)
    source = StreamedTokens(store, batch_rows, seed=cfg.seed, window_shards=window)
    used = streamed_sae_bytes(sum(rows[:window]) + batch_rows, batch_rows, store.dim, cfg.width, cfg.k, itemsize, 4)
    return source, {"streamed": True, "order": "stream", "window_shards": window, "host_bytes": used, "budget": budget}


def store_itemsize(store: TokenStore) -> int:
    """Bytes per stored token value (2 for fp16 stores, 4 for float32 ones); a select fold's StoreView
    answers for the store it views."""
    base = getattr(store, "store", store)
    return next(iter(base.iter_shards()))[1].dtype.itemsize


def cls_chunks(store: TokenStore, images: int = 4096) -> Iterator[torch.Tensor]:
    """The store's CLS tokens `[<= images, D]` a chunk at a time; nothing when it has none."""
    if not store.has_cls:
        return
    for lo in range(0, store.num_images, images):
        yield store.cls(range(lo, min(lo + images, store.num_images)))
